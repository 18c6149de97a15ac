"""Wall time of `transmed predict` on the real example examination (TCGA-FG-6692, its four
native series, skull on), for two or more models side by side: the runs alternate between the
models so that load on a shared machine falls on all of them alike. Each run is a fresh
process (model load, brain extraction, co-registration, inference, restore, write), as a user
runs it; also writes the region volumes of the last run per model.

    python benchmarks/example_predict_time.py --models transmed_a=RUN_A,unet=RUN_U --runs 3 \
        --predict-args "--min-component-mm3 250" --out benchmarks/results/generalist/unet_baseline

Writes ``example_predict_time.{json,md}`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from transmed.io.atomic import atomic_write_text


def predict_once(model: str, out: Path, extra: list[str]) -> float:
    """Seconds for one `transmed predict` of the example examination into ``out``."""
    from transmed.demo_example import predict_args

    cmd = [sys.executable, "-m", "transmed.cli", *predict_args(out, model), "--quiet",
           "--overwrite", *extra]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    from transmed.demo_example import CASE, region_volumes_ml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="name=checkpoint_or_shipped_name,...")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--predict-args", default="", help="passed to every predict")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    models = dict(kv.split("=", 1) for kv in args.models.split(","))
    extra = shlex.split(args.predict_args)
    times: dict[str, list[float]] = {n: [] for n in models}
    volumes: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for name, model in models.items():
                out = Path(tmp) / name
                times[name].append(round(predict_once(model, out, extra), 2))
                volumes[name] = region_volumes_ml(out / f"{CASE}.nii.gz")
    first = next(iter(models))
    med = {n: statistics.median(t) for n, t in times.items()}
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "command": shlex.join(sys.argv),
        "models": models, "predict_args": extra, "seconds": times, "median_s": med,
        "ratio_to_first": {n: round(m / med[first], 3) for n, m in med.items()},
        "volumes_ml": volumes,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "example_predict_time.json", json.dumps(result, indent=1))
    lines = [f"# `transmed predict` on {CASE} (native, skull on), side by side", "",
             f"{result['when']}, `{result['command']}`; runs alternate between the models, "
             "each a fresh process.", "",
             "| model | runs (s) | median (s) | ÷ first | WT / TC / ET (ml) |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for n in models:
        v = volumes[n]
        lines.append(f"| {n} | {', '.join(f'{t:.1f}' for t in times[n])} | {med[n]:.1f} | "
                     f"{result['ratio_to_first'][n]:.2f} | "
                     f"{v['WT']:.1f} / {v['TC']:.1f} / {v['ET']:.1f} |")  # fmt: skip
    atomic_write_text(args.out / "example_predict_time.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
