"""Choose the post-processing of a model on held-out cases (network grid).

    python benchmarks/postprocess_threshold.py --write-cases W/decision --pool-seed 5 \
        --n-tumour 24 --n-tumour-free 8
    python benchmarks/postprocess_threshold.py --models v1_3=generalist --cases W/decision \
        --coreless off,0,5,10,20,40 --name postprocess_selection

Each case (``*.npz``: a z-scored image and internal labels on the 1.5 mm working grid, written
by the generalist recipe's ``prepare_validation`` or by ``--write-cases``) is predicted once per
model the way ``transmed predict`` does (sliding window, overlap 0.5, nested labels by
``regions_to_labels``); then every combination of ``--min-component`` × ``--et-min`` ×
``--coreless`` (``off``, or the core margin in mm of ``drop_coreless_wt``) is applied with
:func:`transmed.inference.postprocess.postprocess_labels` and scored (Dice per region; both
empty = 1). Writes ``benchmarks/results/generalist/NAME.{json,md}``.

``--write-cases`` draws a decision set from a label-map pool the training never used (the
recipe trains on pool seed 0 and validates on 1; ``generalist_eval`` tests on 2 and 3): the
first ``--n-tumour`` maps with a tumour and ``--n-tumour-free`` heads from its tumour-free
maps (another appearance of each map when there are fewer), whole heads as
``prepare_validation`` draws them; ``--n-erased`` adds tumour maps drawn with their tumour
erased (tumour-free heads from that many anatomies; the pools' own tumour-free maps are few).

The selection rule, fixed before the numbers are seen: the highest mean Dice over all cases
(tumour-free heads included: a clean one scores 1 in every region); a combination within
0.002 of it that removes less (a smaller threshold, coreless ``off`` or a larger margin) wins.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REGIONS = ("WT", "TC", "ET")
VOXEL_ML = 1.5**3 / 1000.0  # the generalist's 1.5 mm working grid


def write_cases(folder: Path, pool_seed: int, n_tumour: int, n_free: int, scan: int,
                n_erased: int = 0) -> None:  # fmt: skip
    """The decision set (see the module): ``s{seed}_{map:03d}_{draw}.npz`` + ``.json``.

    ``n_erased``: that many more tumour maps (after the first ``n_tumour``), each drawn once as
    a whole head with its tumour erased (``draw_sample(..., erase=True)``; the case's JSON says
    ``"tumour_erased": true``): tumour-free heads from as many anatomies."""
    from transmed.data.generator import LabelMapPool
    from transmed.data.generator.dataset import sample_rng
    from transmed.data.generator.sample import draw_sample, fine_to_internal
    from transmed.training.generalist import GENERALIST_SPACING, generalist_generator
    from transmed.transforms.store import save_arrays, write_json

    pool = LabelMapPool(folder.parent / "labelmaps", scan, pool_seed, GENERALIST_SPACING)
    tumour, free = [], []
    for i in range(scan):
        (tumour if pool.get(i).tumour_voxels.size else free).append(i)
    if len(tumour) < n_tumour + n_erased or (n_free and not free):
        raise SystemExit(f"pool {pool_seed}: {len(tumour)} tumour and {len(free)} tumour-free "
                         f"maps among the first {scan}; raise --scan")  # fmt: skip
    picks = [(i, 0, False) for i in tumour[:n_tumour]]
    picks += [(i, 0, True) for i in tumour[n_tumour:n_tumour + n_erased]]
    picks += [(free[k % len(free)], k // len(free), False) for k in range(n_free)]
    cfg = generalist_generator((64, 64, 64))
    folder.mkdir(parents=True, exist_ok=True)
    for i, draw, erase in picks:
        path = folder / f"s{pool_seed}_{i:03d}_{draw}.npz"
        if path.is_file():
            continue
        image, fine, info = draw_sample(pool.get(i), sample_rng(pool_seed, draw, i), cfg,
                                        whole=True, erase=erase)  # fmt: skip
        save_arrays(path, image, fine_to_internal(fine))
        write_json(info, path.with_suffix(".json"))
        print("wrote", path.name, flush=True)


def _key(mc: float, et: float, margin: float | None) -> str:
    return f"{mc:g}/{et:g}/" + ("off" if margin is None else f"{margin:g}")


def _removes(key: str) -> tuple:
    """Order for the tie-break: smaller thresholds, coreless off, larger margins first."""
    mc, et, c = key.split("/")
    return (float(mc), float(et), 0.0 if c == "off" else 1.0 / (1.0 + float(c)))


def select(scores: dict[str, dict[str, list[float]]], tol: float = 0.002) -> str:
    """The module's selection rule on ``{key: {case: [WT, TC, ET]}}``."""
    means = {k: float(np.mean(list(v.values()))) for k, v in scores.items()}
    best = max(means.values())
    return min((k for k, m in means.items() if m >= best - tol), key=_removes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="name=checkpoint_or_shipped_name,...")
    ap.add_argument("--cases", type=Path, nargs="+", help="folders of *.npz")
    ap.add_argument("--min-component", default="0,20,100,250,500,1000")
    ap.add_argument("--et-min", default="0,250,500")
    ap.add_argument("--coreless", default="off",
                    help="off and/or core margins in mm, e.g. off,0,10")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/generalist"))
    ap.add_argument("--name", default="postprocess_threshold", help="results file stem")
    ap.add_argument("--tta", choices=["off", "lr", "both"], default="off",
                    help="lr: score left-right mirroring TTA instead of one pass; both: score "
                         "each model with and without it (as NAME and NAME+lr)")
    ap.add_argument("--write-cases", type=Path, help="write a decision set here and stop")
    ap.add_argument("--pool-seed", type=int, default=5)
    ap.add_argument("--n-tumour", type=int, default=24)
    ap.add_argument("--n-tumour-free", type=int, default=8)
    ap.add_argument("--n-erased", type=int, default=0,
                    help="tumour maps drawn as whole heads with the tumour erased")
    ap.add_argument("--scan", type=int, default=70, help="pool maps to scan for --write-cases")
    args = ap.parse_args()
    if args.write_cases:
        write_cases(args.write_cases, args.pool_seed, args.n_tumour, args.n_tumour_free,
                    args.scan, args.n_erased)  # fmt: skip
        return
    if not args.models or not args.cases:
        ap.error("--models and --cases are required (or --write-cases)")
    import torch

    from transmed.data.labels import labels_to_regions, regions_to_labels
    from transmed.evaluation.metrics import dice
    from transmed.inference.core import predict_probabilities
    from transmed.inference.postprocess import PostprocessConfig, postprocess_labels
    from transmed.io.atomic import atomic_write_text
    from transmed.models.checkpoint import load_model
    from transmed.models.pretrained import resolve_model
    from transmed.transforms.store import load_arrays

    mcs = [float(v) for v in args.min_component.split(",")]
    ets = [float(v) for v in args.et_min.split(",")]
    margins = [None if v.strip() == "off" else float(v) for v in args.coreless.split(",")]
    paths = sorted(p for d in args.cases for p in d.glob("*.npz"))
    out: dict = {"cases": [str(p) for p in paths], "models": {}, "scores": {}, "selected": {},
                 "tumour_free": [], "without_et": []}  # fmt: skip
    variants = {"off": [False], "lr": [True], "both": [False, True]}[args.tta]
    for name, src in (kv.split("=", 1) for kv in args.models.split(",")):
        path = resolve_model(src) if not Path(src).exists() else Path(src)
        model = load_model(path).eval()
        names = {tta: f"{name}+lr" if tta and args.tta == "both" else name for tta in variants}
        scores = {tta: {} for tta in variants}
        false_et: dict[bool, dict[str, int]] = {tta: {} for tta in variants}
        false_et_ml: dict[bool, dict[str, float]] = {tta: {} for tta in variants}
        volumes: dict[bool, dict[str, dict[str, list[float]]]] = {tta: {} for tta in variants}
        for p in paths:
            image, label = load_arrays(p)
            ref = labels_to_regions(label)
            if not ref[0].any() and p.stem not in out["tumour_free"]:
                out["tumour_free"].append(p.stem)
            if not ref[2].any() and p.stem not in out["without_et"]:
                out["without_et"].append(p.stem)
            with torch.no_grad():
                # the plain pass and the left-right mirrored pass (the RAS grid's first axis,
                # the only mirroring the generalist saw in training); TTA averages them
                plain = predict_probabilities(model, image, roi_size=(64, 64, 64), overlap=0.5,
                                              precision="fp32")  # fmt: skip
                mirrored = None
                if True in variants:
                    flipped = np.ascontiguousarray(np.flip(image, axis=1))
                    mirrored = np.flip(predict_probabilities(
                        model, flipped, roi_size=(64, 64, 64), overlap=0.5, precision="fp32"),
                        axis=1)  # fmt: skip
            for tta in variants:
                probs = (plain + mirrored) / 2 if tta else plain
                labels = regions_to_labels(probs)
                for mc in mcs:
                    for et in ets:
                        for margin in margins:
                            cfg = PostprocessConfig(mc, et, margin is not None, margin or 0.0)
                            reg = labels_to_regions(postprocess_labels(labels, (1.5,) * 3, cfg))
                            key = _key(mc, et, margin)
                            scores[tta].setdefault(key, {})[p.stem] = [
                                float(dice(reg[i], ref[i])) for i in range(3)]
                            ml = [float(reg[i].sum()) * VOXEL_ML for i in range(3)]
                            volumes[tta].setdefault(key, {})[p.stem] = ml
                            if not ref[2].any() and reg[2].any():
                                false_et[tta][key] = false_et[tta].get(key, 0) + 1
                                false_et_ml[tta][key] = false_et_ml[tta].get(key, 0.0) + ml[2]
            print(name, p.stem, flush=True)
        for tta in variants:
            out["models"][names[tta]] = str(path) + (" (left-right mirroring TTA)" if tta else "")
            out["scores"][names[tta]] = scores[tta]
            out.setdefault("false_et_cases", {})[names[tta]] = false_et[tta]
            out.setdefault("false_et_ml", {})[names[tta]] = false_et_ml[tta]
            out.setdefault("volumes_ml", {})[names[tta]] = volumes[tta]
            out["selected"][names[tta]] = select(scores[tta])
    free = set(out["tumour_free"])
    rows = ["| model | min component mm³ / ET min mm³ / coreless WT margin mm | WT | TC | ET "
            "| mean | mean, tumour | mean, tumour-free | cases with false ET | false ET ml "
            "| false WT / TC / ET ml, tumour-free |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, scores in out["scores"].items():
        for key, per_case in scores.items():
            a = np.array(list(per_case.values()))
            t = np.array([v for c, v in per_case.items() if c not in free])
            f = np.array([v for c, v in per_case.items() if c in free])
            mark = " **(selected)**" if key == out["selected"][name] else ""
            vol = out["volumes_ml"][name][key]
            free_ml = np.array([vol[c] for c in vol if c in free]).reshape(-1, 3).sum(0)
            rows.append(f"| {name} | {key}{mark} | " + " | ".join(f"{v:.3f}" for v in a.mean(0))
                        + f" | {a.mean():.4f} | {t.mean() if t.size else float('nan'):.4f} | "
                        f"{f.mean() if f.size else float('nan'):.4f} | "
                        f"{out['false_et_cases'][name].get(key, 0)} of "
                        f"{len(out['without_et'])} | "
                        f"{out['false_et_ml'][name].get(key, 0.0):.2f} | "
                        + " / ".join(f"{v:.1f}" for v in free_ml) + " |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.name}.json", json.dumps(out, indent=1) + "\n")
    md = ["# Post-processing: Dice against the clean-up settings", "",
          f"{len(paths)} cases ({len(free)} tumour-free, {len(out['without_et'])} without ET): "
          + ", ".join(str(d) for d in args.cases) + ". Sliding window, overlap 0.5, nested "
          "labels, network grid (1.5 mm); both-empty regions score 1. Selection rule: the "
          "highest mean over all cases; within 0.002 of it, the setting that removes less.", "",
          *rows, ""]  # fmt: skip
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(md))
    print("\n".join(rows))
    print("selected:", out["selected"])


if __name__ == "__main__":
    main()
