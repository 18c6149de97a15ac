"""Training-step cost: activation checkpointing and precision, measured side by side.

Targets (training issue): ``--grad-checkpointing`` cuts the peak training memory of
``transmed_full`` at 128³ patches by at least 40% for at most 35% extra time per step. Each
configuration runs in a fresh child process (``run_isolated``: its own RSS high-water mark),
and the configurations alternate over several rounds so drift on a shared machine hits all of
them alike; medians over rounds are reported.
"""

from __future__ import annotations

import statistics
from typing import Any

from transmed.bench.isolation import run_isolated
from transmed.bench.results import machine_info, now_iso, write_results


def measure_train_step(
    model: str, patch: int, batch: int, checkpointing: bool, precision: str, steps: int,
    threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run in a child: ``steps`` optimisation steps after one warm-up; time and peak memory."""
    import time

    import torch

    from transmed.bench.memory import MemoryProbe
    from transmed.models import autocast, create_model

    if threads:
        torch.set_num_threads(threads)
    probe = MemoryProbe("cpu")
    probe.runtime()
    torch.manual_seed(0)
    net = create_model(model).train()
    net.set_grad_checkpointing(checkpointing)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 4, patch, patch, patch)
    y = (torch.rand(batch, 3, patch, patch, patch) > 0.9).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast("cpu", precision):
            out = net(x)
        loss_fn(out.float(), y).backward()
        opt.step()

    step()  # warm-up: oneDNN primitives, optimizer state
    probe.baseline()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    mem = probe.report()
    return {"step_s": statistics.median(times), "times_s": times, **mem.to_dict()}


def run_training_benchmark(
    models: tuple[str, ...] = ("transmed_full",), patch: int = 128, batch: int = 2,
    steps: int = 2, rounds: int = 2, precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> dict[str, Any]:  # fmt: skip
    """All models × {checkpointing off, on} (fp32) + the other precisions without it."""
    configs = [(m, ck, "fp32") for m in models for ck in (False, True)]
    configs += [(m, False, p) for m in models for p in precisions if p != "fp32"]
    raw: dict[tuple, list[dict]] = {c: [] for c in configs}
    for _ in range(rounds):
        for model, ck, prec in configs:
            raw[(model, ck, prec)].append(run_isolated(
                "transmed.bench.training.measure_train_step",
                {"model": model, "patch": patch, "batch": batch, "checkpointing": ck,
                 "precision": prec, "steps": steps},
            ))  # fmt: skip
    rows = []
    for (model, ck, prec), results in raw.items():
        ok = [r for r in results if "step_s" in r]
        row: dict[str, Any] = {"model": model, "grad_checkpointing": ck, "precision": prec}
        if not ok:
            row["error"] = results[0].get("reason", "failed")
        else:
            row["step_s"] = statistics.median(r["step_s"] for r in ok)
            row["peak_bytes"] = int(statistics.median(r["peak_bytes"] for r in ok))
            row["train_peak_bytes"] = int(statistics.median(r["forward_peak_bytes"] for r in ok))
            row["baseline_bytes"] = int(statistics.median(r["baseline_bytes"] for r in ok))
            # Peak minus the Python/torch runtime: weights, gradients, optimizer state and
            # activations, the CPU analogue of CUDA's max_memory_allocated.
            row["allocated_peak_bytes"] = int(
                statistics.median(r["peak_bytes"] - r["runtime_bytes"] for r in ok)
            )
            row["memory_method"] = ok[0]["method"]
        rows.append(row)
    for model in models:
        base = next(r for r in rows if r["model"] == model and not r["grad_checkpointing"]
                    and r["precision"] == "fp32")  # fmt: skip
        for r in rows:
            if r["model"] == model and "step_s" in r and "step_s" in base:
                r["time_ratio"] = r["step_s"] / base["step_s"]
                r["memory_ratio"] = r["peak_bytes"] / base["peak_bytes"]
                r["allocated_ratio"] = r["allocated_peak_bytes"] / base["allocated_peak_bytes"]
    return {
        "benchmark": "training_step",
        "date": now_iso(),
        "machine": machine_info("cpu"),
        "settings": {"patch": patch, "batch": batch, "steps": steps, "rounds": rounds,
                     "optimizer": "AdamW", "loss": "BCE-with-logits"},  # fmt: skip
        "rows": rows,
    }


def training_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# Training step: activation checkpointing and precision ({result['date']})",
        "",
        f"Batch {s['batch']} × 4 × {s['patch']}³, AdamW, one warm-up step then {s['steps']} timed "
        f"steps per child process, {s['rounds']} alternating rounds, medians. Peak = process RSS "
        "high-water mark during the timed steps (model, optimizer state and activations).",
        "",
        "*Allocated* = peak RSS − the Python/torch runtime measured before the model was built "
        "(weights, gradients, optimizer state, activations: what `torch.cuda.max_memory_allocated` "
        "counts on a GPU).",
        "",
        "| model | checkpointing | precision | step (s) | × time | peak RSS (GiB) | × RSS "
        "| allocated (GiB) | × allocated |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['grad_checkpointing']} | {r['precision']} | "
                         f"error: {r['error'][:60]} | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['model']} | {'on' if r['grad_checkpointing'] else 'off'} | {r['precision']} | "
            f"{r['step_s']:.2f} | {r.get('time_ratio', 1):.2f} | {r['peak_bytes'] / 2**30:.2f} | "
            f"{r.get('memory_ratio', 1):.2f} | {r['allocated_peak_bytes'] / 2**30:.2f} | "
            f"{r.get('allocated_ratio', 1):.2f} |"
        )
    lines += ["", "Target: checkpointing memory × ≤ 0.60 at time × ≤ 1.35 "
              "(transmed_full, 128³ patches).", ""]  # fmt: skip
    return "\n".join(lines)


def write_training_benchmark(result: dict[str, Any], out_dir: str) -> dict:
    return write_results(out_dir, "training_step", result, training_markdown(result))
