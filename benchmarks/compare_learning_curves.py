"""Learning curves of two or more training runs side by side, from their ``metrics.csv``.

Rows are the steps where any run validated; for each run: the training loss, the validation
mean Dice (the run's generated validation cases) and every extra validation set's mean Dice
(for the generalist recipe: ``cohort``). The runs should validate on the same cases for the
columns to be comparable (the generalist recipe writes them once into RUN/validation).

    python benchmarks/compare_learning_curves.py transmed_a=runs/stage1 unet=runs/unet_stage1 \
        --out benchmarks/results/generalist/unet_baseline/learning_curves.md
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from transmed.io.atomic import atomic_write_text


def read_metrics(run: Path) -> dict[int, dict[str, str]]:
    """``{step: row}`` of ``run/metrics.csv`` (``run`` may also be the CSV itself)."""
    path = run / "metrics.csv" if run.is_dir() else run
    if not path.is_file():
        raise SystemExit(f"{path}: no metrics.csv")
    with path.open() as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def curve_table(runs: dict[str, dict[int, dict[str, str]]]) -> str:
    """Markdown table: per validated step, each run's loss and mean Dice per validation set."""
    sets = sorted({k[: -len("_dice_mean")] for rows in runs.values() for r in rows.values()
                   for k, v in r.items() if k.endswith("_dice_mean")})  # fmt: skip
    cols = [("train_loss", "train loss")] + [(f"{s}_dice_mean", f"{s} mean Dice") for s in sets]
    steps = sorted({s for rows in runs.values() for s, r in rows.items()
                    if any(r.get(f"{x}_dice_mean") for x in sets)})  # fmt: skip
    head = ["step"] + [f"{label}: {name}" for _, label in cols for name in runs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for step in steps:
        cells = [str(step)]
        for key, _ in cols:
            for rows in runs.values():
                v = rows.get(step, {}).get(key)
                cells.append(f"{float(v):.3f}" if v else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN")
    ap.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = ap.parse_args()
    if any("=" not in r for r in args.runs) or len(args.runs) < 2:
        raise SystemExit("give two or more NAME=RUN")
    runs = {n: read_metrics(Path(p)) for n, p in (r.split("=", 1) for r in args.runs)}
    table = curve_table(runs)
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
