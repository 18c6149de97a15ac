"""The generalist's learning curve across its training stages (one figure, one CSV).

Each stage is a run folder of ``transmed train --preset generalist`` (the second started from
the one before with ``--init-from``); steps are counted across stages. Stages 1 and 2 validate
on the same held-out cases (6 generated, 4 of the original synthetic cohort); stage 3 drew its
6 generated cases anew (same seeds, the generator with enhancing dura), so its generated curve
is on other cases (the cohort cases are the same); stage 4 validates on stage 3's cases
(copied), so stages 3 and 4 are comparable.

    python benchmarks/generalist_curve.py RUN1/metrics.csv RUN2/metrics.csv \
        --out benchmarks/results/generalist/learning_curve.csv \
        --figure docs/images/generalist_learning_curve.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from transmed.io.atomic import atomic_write_text

REGIONS = ("WT", "TC", "ET", "mean")


def merge(paths: list[Path]) -> list[dict[str, str]]:
    """Rows of every stage with ``stage`` and a cumulative ``total_step``."""
    rows, offset = [], 0
    for stage, path in enumerate(paths, start=1):
        stage_rows = list(csv.DictReader(path.open()))
        if not stage_rows:
            raise ValueError(f"{path}: no rows")
        for r in stage_rows:
            rows.append({"stage": str(stage), "total_step": str(offset + int(r["step"])), **r})
        offset += int(stage_rows[-1]["step"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--figure", type=Path, required=True)
    ap.add_argument("--title", default="generalist: stage 1 (from scratch) | stages 2-4 "
                    "(--init-from the stage before; generated cases new from stage 3)")
    args = ap.parse_args()
    rows = merge(args.metrics)
    fields = list(rows[0])
    lines = [",".join(fields)] + [",".join(r.get(f, "") for f in fields) for r in rows]
    atomic_write_text(args.out, "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, prefix, title in ((axes[0], "val", "held-out generated (6)"),
                              (axes[1], "cohort", "original synthetic cohort (4)")):  # fmt: skip
        for region in REGIONS:
            pts = [(int(r["total_step"]), float(r[f"{prefix}_dice_{region}"])) for r in rows
                   if r.get(f"{prefix}_dice_{region}")]  # fmt: skip
            ax.plot(*zip(*pts, strict=True), marker="o", label=region,
                    linewidth=2.5 if region == "mean" else 1.2)  # fmt: skip
        for r0, r1 in zip(rows, rows[1:], strict=False):
            if r1["stage"] != r0["stage"]:
                ax.axvline(int(r0["total_step"]), color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("training step (batch 2, 64³)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice (sliding window)")
    axes[0].legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=90)
    print(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
