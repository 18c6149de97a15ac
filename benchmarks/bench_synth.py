"""Speed of the synthetic cohort generator (``transmed.data.synth``).

Measures, at the full BraTS size by default:

1. one process, one torch thread: the median time per case to generate and to write it;
2. ``generate_cohort`` with ``--workers`` processes: wall time of the whole run (worker
   start-up included) and the steady-state rate between the first and the last finished case
   (from the ``generation.json`` modification times).

Writes ``benchmarks/results/synth_speed.json`` and ``.md``. Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_synth.py --cases 10 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transmed.data.synth import generate_case, generate_cohort, write_case
from transmed.data.synth.anatomy import load_template, output_grid

RESULTS = Path(__file__).parent / "results"


def _sequential(shape: tuple[int, int, int], n: int, tmp: Path) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    load_template(output_grid(shape).spacing)
    template_s = time.perf_counter() - start
    gen, write = [], []
    for i in range(n):
        t0 = time.perf_counter()
        case = generate_case(1, i, shape)
        t1 = time.perf_counter()
        write_case(case, tmp / "sequential")
        gen.append(t1 - t0)
        write.append(time.perf_counter() - t1)
    total = [g + w for g, w in zip(gen, write, strict=True)]
    return {
        "cases": n,
        "template_setup_s": round(template_s, 2),
        "generate_s": [round(v, 3) for v in gen],
        "write_s": [round(v, 3) for v in write],
        "median_generate_s": round(statistics.median(gen), 3),
        "median_write_s": round(statistics.median(write), 3),
        "median_case_s": round(statistics.median(total), 3),
    }


def _cohort(shape: tuple[int, int, int], n: int, workers: int, tmp: Path) -> dict:
    out = tmp / "cohort"
    start = time.time()
    folders = generate_cohort(out, n, seed=0, shape=shape, workers=workers, progress=False)
    wall = time.time() - start
    done = sorted((f / "generation.json").stat().st_mtime for f in folders)
    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else float("nan")
    return {
        "cases": n,
        "workers": workers,
        "wall_s": round(wall, 2),
        "cases_per_s_including_startup": round(n / wall, 3),
        "s_per_case_including_startup": round(wall / n, 3),
        "steady_cases_per_s": round(steady, 3),
        "steady_s_per_case": round(1.0 / steady, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10, help="cases in the cohort run")
    parser.add_argument("--sequential", type=int, default=4, help="cases in the 1-process run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    args = parser.parse_args()
    shape = tuple(args.shape)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        sequential = _sequential(shape, args.sequential, Path(tmp))
        cohort = _cohort(shape, args.cases, args.workers, Path(tmp))
    result = {
        "benchmark": "transmed data synth",
        "shape": list(shape),
        "image_dtype": "int16 (labels uint8), gzip level 1",
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "sequential_1_process": sequential,
        "cohort": cohort,
        "requirement": "at least 0.5 cases/s (one full-size case per 2 s) on 2 cores",
        "meets_requirement_steady": cohort["steady_cases_per_s"] >= 0.5,
        "meets_requirement_including_startup": cohort["cases_per_s_including_startup"] >= 0.5,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    seq, co, mach = sequential, cohort, result["machine"]
    n_w = co["workers"]
    rows = [
        ("1 process: median generate", seq["cases"], f"{seq['median_generate_s']} s"),
        ("1 process: median write (5 NIfTI + JSON)", seq["cases"], f"{seq['median_write_s']} s"),
        ("1 process: median per case", seq["cases"], f"**{seq['median_case_s']} s**"),
        ("template set-up (once per process)", "-", f"{seq['template_setup_s']} s"),
        (
            f"cohort, {n_w} workers, wall incl. start-up",
            co["cases"],
            f"{co['wall_s']} s = {co['s_per_case_including_startup']} s/case = "
            f"{co['cases_per_s_including_startup']} cases/s",
        ),
        (
            f"cohort, {n_w} workers, steady state",
            co["cases"],
            f"**{co['steady_s_per_case']} s/case = {co['steady_cases_per_s']} cases/s**",
        ),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    met = {True: "met", False: "NOT met"}
    md = f"""# Synthetic cohort speed (`transmed data synth`)

Shape {" x ".join(map(str, shape))}, int16 images + uint8 labels, gzip level 1.
Machine: {mach["cpu_count"]} CPU cores ({mach["processor"]}), Python {mach["python"]},
numpy {mach["numpy"]}, torch {mach["torch"]}. Load average before / after:
{mach["load_average_before"]} / {mach["load_average_after"]} (the machine is shared, so a
load above 0 means other jobs competed for the cores).

| run | cases | result |
|---|---|---|
{table}

Requirement: one full-size case per 2 s on 2 cores (0.5 cases/s). Steady state:
{met[result["meets_requirement_steady"]]}; including worker start-up:
{met[result["meets_requirement_including_startup"]]}.

Reproduce: `PYTHONPATH=src .venv/bin/python benchmarks/bench_synth.py --cases {co["cases"]}
--workers {n_w}`.
"""
    (RESULTS / "synth_speed.md").write_text(md)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
