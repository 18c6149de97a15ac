"""Is bf16 inference accuracy-neutral? Dice of fp32 vs bf16 predictions on held-out cases.

Issue 5 adopts bf16 autocast for inference only where it is faster *and* changes the mean Dice
on the synthetic cohort by at most 0.002. This script checks the second half with a trained
model: it predicts the demo's held-out cases with ``transmed predict``'s code path twice (fp32,
bf16), evaluates both against the ground truth, and writes
``benchmarks/results/precision_agreement.{json,md}``.

    transmed demo --out demo --models transmed_full          # trains the model (≈ 5 min CPU)
    python benchmarks/precision_agreement.py --demo demo --model transmed_full
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from transmed.bench.results import machine_info, machine_markdown, now_iso, write_results
from transmed.data.labels import REGIONS
from transmed.evaluation.evaluate import evaluate_folders
from transmed.inference.batch import BatchWriter, predict_batch
from transmed.inference.inputs import resolve_inputs
from transmed.inference.postprocess import PostprocessConfig
from transmed.inference.predictor import Predictor

PRECISIONS = ("fp32", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="transmed demo output folder")
    parser.add_argument("--model", default="transmed_full")
    parser.add_argument("--test-cases", type=int, default=8, help="held-out cases (demo: 8)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    data = args.demo / "data"
    test_ids = sorted(p.name for p in data.iterdir() if p.is_dir())[: args.test_cases]
    run = args.demo / "runs" / args.model
    with tempfile.TemporaryDirectory(prefix="transmed-precision-") as tmp:
        cases_dir = Path(tmp) / "cases"
        cases_dir.mkdir()
        for cid in test_ids:  # the held-out cases only, as the demo's validation split
            (cases_dir / cid).symlink_to((data / cid).resolve())
        inputs = resolve_inputs(cases_dir)
        per: dict[str, dict] = {}
        for precision in PRECISIONS:
            predictor = Predictor.from_path(
                run, precision=precision, postprocess=PostprocessConfig()
            )
            pred_dir = Path(tmp) / precision
            start = time.perf_counter()
            results = predict_batch(predictor, inputs.cases, BatchWriter(pred_dir, inputs.layout))
            wall = time.perf_counter() - start
            failed = [r.case_id for r in results if not r.ok]
            if failed:
                raise SystemExit(f"{precision}: prediction failed for {failed}")
            report = evaluate_folders(
                pred_dir, data, lesionwise=False, progress=False, case_ids=set(test_ids)
            )
            dice = {
                r.case_id: {reg: r.metrics[reg]["dice"] for reg in REGIONS}
                for r in report.results
            }
            per[precision] = {
                "dice": dice,
                "mean_dice": {
                    reg: statistics.mean(d[reg] for d in dice.values()) for reg in REGIONS
                },
                "infer_s_median": statistics.median(r.seconds["infer"] for r in results),
                "batch_wall_s": wall,
            }
    delta = {
        reg: per["bf16"]["mean_dice"][reg] - per["fp32"]["mean_dice"][reg] for reg in REGIONS
    }
    worst_case = max(
        abs(per["bf16"]["dice"][c][reg] - per["fp32"]["dice"][c][reg])
        for c in test_ids
        for reg in REGIONS
    )
    result = {
        "benchmark": "precision_agreement", "date": now_iso(), "machine": machine_info("cpu"),
        "run": str(run), "cases": test_ids, "per_precision": per,
        "mean_dice_delta_bf16_minus_fp32": delta, "max_per_case_abs_delta": worst_case,
        "neutral_within_0.002": all(abs(v) <= 0.002 for v in delta.values()),
    }  # fmt: skip
    lines = [
        "# bf16 vs fp32 inference: Dice on the held-out synthetic cases",
        "",
        machine_markdown(result["machine"], result["date"]),
        "",
        f"Model: `{run}` (trained by `transmed demo --models {args.model}`), "
        f"{len(test_ids)} held-out cases, `transmed predict`'s path with post-processing. "
        "Command: `python benchmarks/precision_agreement.py --demo DEMO`.",
        "",
        "| precision | " + " | ".join(f"mean Dice {r}" for r in REGIONS) + " | infer median |",
        "|---|" + "---:|" * (len(REGIONS) + 1),
    ]
    for precision in PRECISIONS:
        p = per[precision]
        lines.append(
            f"| {precision} | "
            + " | ".join(f"{p['mean_dice'][r]:.4f}" for r in REGIONS)
            + f" | {p['infer_s_median']:.2f} s |"
        )
    lines += [
        "",
        "Δ mean Dice (bf16 − fp32): "
        + ", ".join(f"{r} {delta[r]:+.4f}" for r in REGIONS)
        + f"; largest per-case |Δ| {worst_case:.4f}. Within 0.002: "
        + ("**yes**" if result["neutral_within_0.002"] else "**no**")
        + ".",
    ]
    paths = write_results(args.out, "precision_agreement", result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"Wrote {paths['json']} and {paths['markdown']}")


if __name__ == "__main__":
    main()
