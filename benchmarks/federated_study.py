"""The federated comparison study on simulated hospitals that differ (issue 14).

Arms, all the same tiny TransMed network, the same total optimisation budget (the same number
of optimiser steps of the same batch size, summed over sites) and the same held-out test set
(cases drawn from every site's protocol):

- ``centralised``: the sites' cases pooled, one trainer run;
- ``centralised_seq``: the same, with a third of the steps: as many SEQUENTIAL steps as the
  federated global model takes (rounds × local steps). With FedAvg, 3 sites × k local steps
  per round move the global model by about k steps, not 3k (the sites' steps run in parallel
  and are averaged), so at the same total compute FedAvg has a third of the depth;
- ``fedavg``, ``fedprox``: Flower FedAvg / FedProx over the three sites;
- ``fedavg_v0`` (ablation, not in the default arms): FedAvg as it was before 2026-11-30, each
  round a fresh AdamW whose rate decays from the round's rate to 0 within the round;
- ``fedavg_slr3`` (and ``fedavg_slrX``): FedAvg with the server step size η_g = X
  (``FederatedConfig.server_lr``; default the number of sites), which gives the global model
  back the depth the averaging takes away;
- ``fedadam`` (and ``fedadam_etaX``): FedAdam (Reddi et al. 2021): Flower's weighted mean,
  then a server Adam step on the averaged move (``strategy="fedadam"``, server η = X, default
  ``FederatedConfig.server_eta``; τ, betas and the η schedule: the config's defaults);
- ``fedavg_sgdX``: FedAvg with local SGD at the sites (momentum 0.9, peak rate X instead of
  ``--lr``, which is AdamW's; ``FederatedConfig.local_optimizer="sgd"``);
- ``centralised_sgdX``: its centralised control: SGD (momentum 0.9, peak rate X) on the pooled
  training cases, as a one-site federation with 3 × ``--iters`` steps per round (a FedAvg of
  one site is that site's weights), so the same steps and rate schedule as ``centralised``;
- ``dp_eps8``, ``dp_eps2``: FedAvg with DP-SGD at every site, ε ≈ 8 and ≈ 2 at δ = 1e-5;
- ``site_A``, ``site_B``, ``site_C``: each site training alone (the whole budget on its data).

Dice on the held-out set is measured after each round (or round-equivalent: one centralised
epoch = the steps of one federated round), with the trainer's validation (the ``predict``
code path); the final models predict the held-out cases on their original grid and are
compared with ``transmed compare`` (paired Wilcoxon / t-test, bootstrap CI; reference:
centralised).

    python benchmarks/federated_study.py --work /tmp/fedstudy --rounds 10 --iters 6 --lr 5e-3

Arms may run in two processes (``--data-only`` first, then ``--arms`` subsets with their own
``--results``; a last ``--report-only`` run gathers them).

Writes ``benchmarks/results/federated/{study.json, study.md, dice_vs_rounds.png, compare.*}``.
Resumable: finished arms are kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

REGIONS = ("WT", "TC", "ET")


def _model_kwargs() -> dict[str, Any]:
    return {"features": [8, 16, 32], "encoder_blocks": [1, 1, 1], "decoder_blocks": [1, 1],
            "axial_stages": [2], "attention_head_dim": 8, "patch_size": 32,
            "full_res_channels": 4, "num_kernels": 2}  # fmt: skip


def train_config(args: argparse.Namespace, epochs: int, iters: int) -> dict[str, Any]:
    return {
        "model": args.model, "model_kwargs": _model_kwargs(), "epochs": epochs,
        "iters_per_epoch": iters, "batch_size": args.batch, "patch_size": [32, 32, 32],
        "foreground_prob": 0.5, "lr": args.lr, "warmup_epochs": 0.0, "val_every": 1,
        "val_overlap": 0.25, "num_workers": 0, "precision": "fp32", "seed": args.seed,
        "temperature_epochs": max(1.0, args.rounds / 2),
        "augment": {"elastic_prob": 0.0, "affine_prob": 0.2},
    }  # fmt: skip


def make_data(work: Path, seed: int) -> tuple[dict[str, Path], Path, Path, list]:
    """Raw site cohorts, the held-out set, and a pooled raw folder (copies: the evaluation
    looks for label files without following symlinks)."""
    from transmed.federated.sites import default_sites, generate_site, held_out_sites

    profiles = default_sites(1, (40, 40, 32))
    sites = {}
    for p in profiles:
        sites[p.name] = work / "raw" / p.name
        generate_site(p, sites[p.name], seed)
    test = work / "raw" / "test"
    for p in held_out_sites(profiles, per_site=2):
        generate_site(p, test, seed)
    pooled = work / "raw" / "pooled"
    pooled.mkdir(parents=True, exist_ok=True)
    for folder in [*sites.values(), test]:
        for case in folder.iterdir():
            if not (pooled / case.name).exists():
                shutil.copytree(case, pooled / case.name)
    return sites, test, pooled, profiles


def train_pool(work: Path, sites: dict[str, Path]) -> Path:
    """The three sites' training cases in one preprocessed folder (no held-out case): the
    single site of the ``centralised_sgdX`` control."""
    from transmed.training.run import prepare_data

    raw = work / "raw" / "train_pool"
    raw.mkdir(parents=True, exist_ok=True)
    for folder in sites.values():
        for case in folder.iterdir():
            if not (raw / case.name).exists():
                shutil.copytree(case, raw / case.name)
    return prepare_data(raw, work / "preprocessed" / "train_pool", progress=False)[0]


def _eval_run_folder(arm_dir: Path, ckpt: Path, pre: Path, test_ids: list[str]) -> None:
    from transmed.training.oof import evaluate_predictions, predict_cases

    predict_cases([(ckpt, test_ids)], pre, arm_dir, arm_dir / "predictions", progress=False)
    evaluate_predictions(arm_dir / "predictions", pre, arm_dir)


def run_trained_arm(name: str, args, work: Path, pooled: Path, pooled_pre: Path,
                    train_ids: list[str], test_ids: list[str]) -> list[float]:  # fmt: skip
    """Centralised or one site alone: TransMed's trainer, validation = the held-out set."""
    from transmed.training.config import TrainConfig
    from transmed.training.run import train

    arm = work / "arms" / name
    if not (arm / "evaluation.csv").is_file():
        if arm.exists():
            shutil.rmtree(arm)
        per_epoch = args.iters * (1 if name == "centralised_seq" else 3)
        cfg = TrainConfig(**train_config(args, args.rounds, per_epoch))
        train(pooled, arm, cfg, split={"train": train_ids, "val": test_ids},
              preprocessed_cache=pooled_pre, progress=False, device="cpu")  # fmt: skip
    with open(arm / "metrics.csv", newline="") as fh:
        return [float(r["val_dice_mean"]) for r in csv.DictReader(fh) if r["val_dice_mean"]]


def run_federated_arm(name: str, args, work: Path, site_pre: dict[str, Path], test_pre: Path,
                      test_ids: list[str], lr: float | None = None, iters: int | None = None,
                      **fed: Any) -> tuple[list[float], list[dict]]:  # fmt: skip
    from transmed.federated.config import FederatedConfig
    from transmed.federated.run import simulate

    arm = work / "arms" / name
    if not (arm / "evaluation.csv").is_file():
        train = {**train_config(args, 1, iters or args.iters),
                 **({"lr": lr} if lr is not None else {})}  # fmt: skip
        cfg = FederatedConfig(train=train, rounds=args.rounds, local_epochs=1,
                              min_clients=len(site_pre), **fed)  # fmt: skip
        simulate(cfg, site_pre, arm, test_data=test_pre)
        _eval_run_folder(arm, arm / "checkpoints" / "global.pt", test_pre, test_ids)
    records = json.loads((arm / "rounds.json").read_text())
    return [float(r["eval"]["dice_mean"]) for r in records], records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fedstudy"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/federated"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--iters", type=int, default=4, help="steps per site per round")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--mu", type=float, default=0.01, help="FedProx μ")
    ap.add_argument("--model", default="transmed_full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="centralised,centralised_seq,fedavg,fedprox,dp_eps8,"
                    "dp_eps2,site_A,site_B,site_C")  # fmt: skip
    ap.add_argument("--data-only", action="store_true", help="make and preprocess the data")
    ap.add_argument("--report-only", action="store_true",
                    help="only write the results of the arms already finished")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from transmed.evaluation.compare import compare
    from transmed.federated.privacy import DPSettings
    from transmed.io.atomic import atomic_write_text
    from transmed.training.run import prepare_data

    t0, c0 = time.perf_counter(), time.process_time()
    work = args.work
    sites, test, pooled, profiles = make_data(work, args.seed)
    t_data = time.perf_counter() - t0
    pre = work / "preprocessed"
    site_pre = {n: prepare_data(p, pre / n, progress=False)[0] for n, p in sites.items()}
    test_pre, test_ids = prepare_data(test, pre / "test", progress=False)
    pooled_pre, pooled_ids = prepare_data(pooled, pre / "pooled", progress=False)
    site_ids = {n: prepare_data(p, pre / n, progress=False)[1] for n, p in sites.items()}
    if args.data_only:
        return
    all_train = sorted(i for ids in site_ids.values() for i in ids)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if args.report_only:
        arms = [a for a in arms if (work / "arms" / a / "evaluation.csv").is_file()]
    curves: dict[str, list[float]] = {}
    eps: dict[str, dict[str, float]] = {}
    timing: dict[str, float] = {}
    train_loss: dict[str, float] = {}  # federated arms: sites' mean loss, last 10 rounds
    for name in arms:
        ta, ca = time.perf_counter(), time.process_time()
        print(f"== {name}", flush=True)
        if name in ("centralised", "centralised_seq"):
            curves[name] = run_trained_arm(name, args, work, pooled, pooled_pre, all_train,
                                           test_ids)  # fmt: skip
        elif name.startswith("site_"):
            curves[name] = run_trained_arm(name, args, work, pooled, pooled_pre,
                                           site_ids[name[5:]], test_ids)  # fmt: skip
        else:
            fed: dict[str, Any] = {}
            arm_sites = site_pre
            if name.startswith("centralised_sgd"):  # the SGD control: ONE site with all the
                # training cases (no held-out case), 3 × iters steps per round, so the
                # federated code path is a centralised SGD run with the same rates and steps
                arm_sites = {"pooled": train_pool(work, sites)}
                fed = {"local_optimizer": "sgd", "local_momentum": 0.9,
                       "lr": float(name[len("centralised_sgd"):]),
                       "iters": args.iters * len(site_pre)}  # fmt: skip
            elif name.startswith("fedavg_sgd"):  # local SGD, its own peak rate (fedavg_sgd0.01)
                fed = {"local_optimizer": "sgd", "local_momentum": 0.9,
                       "lr": float(name[len("fedavg_sgd"):])}  # fmt: skip
            elif name == "fedavg_v0":  # ablation: the round schedule and fresh AdamW of before
                fed = {"keep_optimizer_state": False, "local_lr_schedule": "per_round"}
            elif name.startswith("fedavg_slr"):  # FedAvg with a server step size η_g
                fed = {"server_lr": float(name[len("fedavg_slr"):] or len(site_pre))}
            elif name.startswith("fedadam"):  # server Adam, η from the name (fedadam_eta0.03)
                eta = name[len("fedadam"):].removeprefix("_eta")
                fed = {"strategy": "fedadam", **({"server_eta": float(eta)} if eta else {})}
            elif name == "fedprox":
                fed = {"strategy": "fedprox", "proximal_mu": args.mu}
            elif name.startswith("dp_eps"):
                fed = {"dp": DPSettings(epsilon=float(name[6:]), delta=1e-5, max_grad_norm=1.0)}
            curves[name], records = run_federated_arm(name, args, work, arm_sites, test_pre,
                                                      test_ids, **fed)  # fmt: skip
            train_loss[name] = last_rounds_train_loss(records)
            if name.startswith("dp_eps"):
                eps[name] = {s: m.get("dp_epsilon") for s, m in records[-1]["site_metrics"].items()}
                eps[name]["noise_multiplier"] = {
                    s: m.get("dp_noise_multiplier") for s, m in records[-1]["site_metrics"].items()}
        tfile = work / "arms" / name / "timing.json"
        if not args.report_only and not tfile.is_file():
            tfile.write_text(json.dumps({"wall_s": time.perf_counter() - ta,
                                         "cpu_s": time.process_time() - ca}))  # fmt: skip
        timing[name] = arm_timing(work, name)
        print(f"   Dice per round: {[round(v, 3) for v in curves[name]]}", flush=True)

    # paired comparison with `transmed compare` (labels = arm names)
    cin = work / "compare_in"
    for name in arms:
        d = cin / name
        d.mkdir(parents=True, exist_ok=True)
        src = work / "arms" / name
        shutil.copy(src / "evaluation.csv", d / "evaluation.csv")
        shutil.copy(src / "inference.json", d / "inference.json")
        (d / "config.json").write_text(json.dumps({"model": name}))
    args.results.mkdir(parents=True, exist_ok=True)
    ref = "centralised" if "centralised" in arms else arms[0]
    result, md, _ = compare([cin / a for a in arms], reference=ref, metrics=["dice"],
                            out=args.results)  # fmt: skip
    final = {a: {r: result["runs"][i]["summary"]["dice"][r]["mean"] for r in (*REGIONS, "mean")}
             for i, a in enumerate(arms)}  # fmt: skip
    budget = {
        "optimiser_steps_per_arm": args.rounds * args.iters * 3, "batch": args.batch,
        "global_model_steps_federated": args.rounds * args.iters, "lr": args.lr,
        "fedprox_mu": args.mu, "seed": args.seed,
        "patch": [32, 32, 32], "rounds": args.rounds, "steps_per_site_per_round": args.iters,
        "model": args.model, "model_kwargs": _model_kwargs(),
        "parameters": json.loads((work / "arms" / arms[0] / "inference.json").read_text())
        .get("parameters"),
        "cpu_s_arms": sum(t.get("cpu_s", 0.0) for t in timing.values()),
        "cpu_s_total": time.process_time() - c0, "wall_s_total": time.perf_counter() - t0,
        "elapsed_wall_s_arms": study_elapsed(work, arms),
        "data_generation_wall_s": t_data,
        "machine": f"{platform.machine()}, {os.cpu_count()}-core CPU, no GPU, torch threads "
                   f"{torch.get_num_threads()} per process, shared with a background training "
                   "job (at higher priority) and other sessions' work",
        "command": "python benchmarks/federated_study.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("rounds", args.rounds),
            ("iters", args.iters), ("lr", args.lr), ("mu", args.mu), ("batch", args.batch),
            ("seed", args.seed))),
    }  # fmt: skip
    study = {"arms": arms, "dice_per_round": curves, "final_dice": final, "dp_epsilon": eps,
             "timing": timing, "final_train_loss": train_loss, "budget": budget,
             "sites": [p.__dict__ for p in profiles],
             "test_cases": test_ids, "compare": result,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    from transmed.evaluation.compare import json_safe

    atomic_write_text(args.results / "study.json",
                      json.dumps(json_safe(study), indent=1, default=str) + "\n")
    atomic_write_text(args.results / "study.md", study_markdown(study, md))
    plot(curves, args.results / "dice_vs_rounds.png")
    print(study_markdown(study, md))


def last_rounds_train_loss(records: list[dict], n: int = 10) -> float:
    """The sites' mean training loss over the last ``n`` rounds (training data only: the
    rule that picks among FedAdam's η without looking at the held-out set)."""
    losses = [float(m["train_loss"]) for r in records[-n:]
              for m in r.get("site_metrics", {}).values() if "train_loss" in m]  # fmt: skip
    return sum(losses) / len(losses) if losses else float("nan")


def arm_timing(work: Path, name: str) -> dict[str, float]:
    """CPU and wall seconds of an arm, from its folder or from the partial study file of the
    process that ran it (arms may run in parallel processes)."""
    tfile = work / "arms" / name / "timing.json"
    if tfile.is_file():
        return json.loads(tfile.read_text())
    for study in sorted(work.glob("results_*/study.json")):
        t = json.loads(study.read_text()).get("timing", {}).get(name)
        if t:
            return t
    return {}


def study_elapsed(work: Path, arms: list[str]) -> float:
    """Wall seconds from the first arm's start to the last arm's end (arms may have run in
    parallel processes): each arm's ``timing.json`` was written at its end."""
    spans = []
    for name in arms:
        tfile = work / "arms" / name / "timing.json"
        if tfile.is_file():
            end = tfile.stat().st_mtime
            spans.append((end - json.loads(tfile.read_text())["wall_s"], end))
    return max(e for _, e in spans) - min(b for b, _ in spans) if spans else float("nan")


def study_markdown(study: dict, compare_md: str) -> str:
    b = study["budget"]
    k, r = b["steps_per_site_per_round"], b["rounds"]
    final = study["final_dice"]
    lines = ["# Federated study (issue 14)", "",
             f"Command: `{b.get('command', '')}` (arms in parallel processes, see the "
             "script's docstring). Date: " + study.get("date", "") + ".", "",
             f"**Budget**: {b['optimiser_steps_per_arm']} optimiser steps per arm (batch "
             f"{b['batch']}, patch 32³, AdamW, peak lr {b.get('lr')}"
             + ("; the `_sgd` arms: SGD, see below" if any("_sgd" in a for a in study["arms"])
                else "") + ", poly decay, no warm-up): "
             f"centralised and each site alone take {r} epochs × {3 * k} steps; the federated "
             f"arms {r} rounds × 3 sites × {k} local steps. Model {b['model']} "
             f"({b['parameters']} parameters). **Machine**: {b['machine']}. **Time**: all arms "
             f"{b['cpu_s_arms'] / 60:.1f} CPU-min, "
             f"{b.get('elapsed_wall_s_arms', float('nan')) / 60:.1f} min wall "
             "(training, per-round evaluation and final prediction; per arm below).",
             "",
             f"**Fair budget.** The same total compute is not the same depth: FedAvg's 3 sites × "
             f"{k} local steps per round are averaged into ONE move of the global model of about "
             f"{k} steps, so after {r} rounds the global model has taken ~{r * k} sequential "
             f"steps, against {3 * r * k} for `centralised`. `centralised_seq` is the pooled "
             f"data with {r * k} steps ({r} epochs × {k}): the same depth as the federated "
             "global model, a third of the compute.", "",
             "**Two measures.** `Dice per round` is the trainer's validation on the held-out "
             "cases (each region channel thresholded on its own, preprocessed grid). The final "
             "table is the clinical path: `transmed predict` label maps (regions nested: an ET "
             "voxel is also TC and WT) on the original grid, scored by `transmed evaluate`; it "
             "is higher early in training, when a model finds ET before WT/TC.", ""]  # fmt: skip
    if "fedavg" in final and "centralised" in final:
        gap = final["fedavg"]["mean"] - final["centralised"]["mean"]
        met = "met" if gap >= -0.02 else "NOT met"
        lines += [f"**Target** (FedAvg within 0.02 mean Dice of centralised at the same "
                  f"budget): {met}, FedAvg − centralised = {gap:+.3f}."]  # fmt: skip
        if "centralised_seq" in final:
            g2 = final["fedavg"]["mean"] - final["centralised_seq"]["mean"]
            lines[-1] += f" Against `centralised_seq` (same depth): {g2:+.3f}."
        lines += [""]
    for a in (a for a in study["arms"] if a.startswith("fedavg_sgd")):
        lines += [f"**{a}**: the sites use SGD with momentum 0.9 at peak rate "
                  f"{a[len('fedavg_sgd'):]} instead of AdamW (the budget above is otherwise "
                  "the same).", ""]  # fmt: skip
    for a in (a for a in study["arms"] if a.startswith("centralised_sgd")):
        lines += [f"**{a}**: the SGD control: SGD with momentum 0.9 at peak rate "
                  f"{a[len('centralised_sgd'):]}, on the pooled training cases (one site "
                  f"holding the three sites' cases, {3 * k} steps per round, through the "
                  "federated code path; the same steps and rate schedule as `centralised`).",
                  ""]  # fmt: skip
    for a in (a for a in study["arms"] if a.startswith("fedadam") and "centralised" in final):
        gap = final[a]["mean"] - final["centralised"]["mean"]
        loss = study.get("final_train_loss", {}).get(a)
        lines += [f"**Target with {a}** (within 0.02 of centralised): "
                  f"{'met' if gap >= -0.02 else 'NOT met'}, {a} − centralised = {gap:+.3f}"
                  + (f"; sites' mean training loss over the last 10 rounds {loss:.4f}."
                     if loss is not None else "."), ""]  # fmt: skip
    lines += ["| arm | WT | TC | ET | mean | ε spent (δ = 1e-5), max over sites | Dice per round |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in study["arms"]:
        f = final.get(a, {})
        cells = " | ".join(f"{f.get(r, float('nan')):.3f}" for r in (*REGIONS, "mean"))
        e = {s: v for s, v in study["dp_epsilon"].get(a, {}).items() if s != "noise_multiplier"}
        spent = f"{max(e.values()):.2f}" if e else "— (no DP)"
        curve = " ".join(f"{v:.2f}" for v in study["dice_per_round"].get(a, []))
        lines.append(f"| {a} | {cells} | {spent} | {curve} |")
    lines += ["", "| arm | CPU s | wall s |", "|---|---|---|"]
    for a in study["arms"]:
        t = study["timing"].get(a, {})
        lines.append(f"| {a} | {t.get('cpu_s', float('nan')):.0f} | "
                     f"{t.get('wall_s', float('nan')):.0f} |")  # fmt: skip
    if study["dp_epsilon"]:
        lines += ["", "ε spent per site at δ = 1e-5 after the last round (noise multiplier):", ""]
        for a, e in study["dp_epsilon"].items():
            sig = e.get("noise_multiplier", {})
            lines.append(f"- {a}: " + ", ".join(
                f"site {s} ε={v:.2f} (σ={sig.get(s, float('nan')):.2f})"
                for s, v in e.items() if s != "noise_multiplier"))  # fmt: skip
    ref = "centralised" if "centralised" in study["arms"] else study["arms"][0]
    lines += ["", f"## Paired comparison (`transmed compare`, reference: {ref})", "",
              compare_md]
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, ys in curves.items():
        style = "--" if name.startswith("site_") else ("-." if name.startswith("dp") else "-")
        ax.plot(range(1, len(ys) + 1), ys, style, marker="o", ms=3, label=name)
    ax.set_xlabel("round (centralised / site alone: the same number of steps)")
    ax.set_ylabel("held-out mean Dice (WT, TC, ET)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    import io

    from transmed.io.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


if __name__ == "__main__":
    main()
