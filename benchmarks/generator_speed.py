"""The generator's cost per training sample against the network's training step, side by side.

    python benchmarks/generator_speed.py --maps RUN/labelmaps [--samples 20 --steps 10]

Both are measured in this one process, one after the other, on the generalist recipe's
settings (64³ patches at 1.5 mm, ``transmed_a``, batch 2, AdamW, Dice + BCE); writes
``benchmarks/results/generator_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from transmed.data.generator import GeneratorConfig, GeneratorDataset, LabelMapPool
from transmed.io.atomic import atomic_write_text
from transmed.models import create_model
from transmed.training.losses import RegionDiceBCELoss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=Path, required=True, help="cached label-map pool folder")
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pool = LabelMapPool(args.maps, args.pool, 0, 1.5)
    pool.build(progress=False)
    ds = GeneratorDataset(pool, GeneratorConfig(), length=args.samples, seed=123)
    ds[0]  # warm-up
    gen = []
    for i in range(args.samples):
        t0 = time.perf_counter()
        ds[i]
        gen.append(time.perf_counter() - t0)
    model = create_model("transmed_a", patch_size=64)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    loss_fn = RegionDiceBCELoss()
    batch = [ds[i] for i in range(2)]
    x = torch.stack([b["image"] for b in batch])
    y = torch.stack([b["target"] for b in batch])
    steps = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if i:  # the first step is a warm-up
            steps.append(time.perf_counter() - t0)
    g, s = statistics.median(gen), statistics.median(steps)
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads, "torch": torch.__version__,
        "generator_s_per_sample_median": round(g, 4), "samples": args.samples,
        "network_step_s_median_batch2": round(s, 4), "steps": args.steps,
        "generator_share_of_step": round(2 * g / (2 * g + s), 3),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "generator_speed.json", json.dumps(res, indent=1))
    md = (
        "# Generator cost vs network step (generalist recipe)\n\n"
        f"Measured {res['date']} on the 2-core CPU machine, torch {res['torch']}, "
        f"{args.threads} threads, in one process.\n\n"
        "| what | median |\n|---|---:|\n"
        f"| one generated 64³ sample (4 modalities + targets) | {g:.3f} s |\n"
        f"| one training step, batch 2 (forward, backward, AdamW) | {s:.3f} s |\n"
        f"| generator share of a step (2 samples + step) | {res['generator_share_of_step']:.0%} |\n"
    )
    atomic_write_text(args.out / "generator_speed.md", md)
    print(md)


if __name__ == "__main__":
    main()
