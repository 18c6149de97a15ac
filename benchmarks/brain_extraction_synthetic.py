"""deepbet against a known brain: whole synthetic heads with tumours (issue 11).

The domain-randomised generator (:mod:`transmed.data.generator`) grows skull, marrow, fat and
scalp around a brain with a tumour, so the true brain mask is known. Each head is drawn with
the skull on, no modality dropout, and native or thick-slice resolution as the generator draws
it; deepbet (:func:`transmed.transforms.brain_extraction.brain_mask`) runs on the T1ce channel
and on the T1 channel, and its mask is compared with the generator's brain (Dice).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/brain_extraction_synthetic.py --heads 4

Writes ``benchmarks/results/brain_extraction_synthetic.{json,md}``. The generator's contrasts
are random, so this is a harder test than real T1w scans (for which deepbet was trained).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from transmed.data.generator.dataset import sample_rng
    from transmed.data.generator.labelmaps import make_labelmap
    from transmed.data.generator.sample import GeneratorConfig, draw_sample
    from transmed.transforms.brain_extraction import brain_mask

    config = GeneratorConfig(skull_prob=1.0, dropout_prob=0.0, random_contrast_prob=0.0)
    rows = []
    for i in range(args.heads):
        lm = make_labelmap(args.seed, i, spacing=1.5)
        image, fine, info = draw_sample(lm, sample_rng(args.seed, 0, i), config, whole=True)
        truth = fine > 0
        affine = np.diag([1.5, 1.5, 1.5, 1.0])  # the generator's arrays are RAS
        row = {"head": i, "truth_ml": round(float(truth.sum()) * 1.5**3 / 1000, 1),
               "tumour_ml": round(float(((fine >= 4) & (fine <= 7)).sum()) * 1.5**3 / 1000, 1),
               "resolution": info["resolution"][:2]}  # fmt: skip
        for c, name in ((1, "t1ce"), (0, "t1")):
            t0 = time.perf_counter()
            result = brain_mask(image[c], affine)
            row[name] = {"dice": round(dice(result.mask, truth), 4),
                         "volume_ml": round(result.volume_ml, 1),
                         "tumour_inside": round(float(result.mask[(fine >= 4) & (fine <= 7)]
                                                      .mean()) if (fine >= 4).any() else 1.0, 4),
                         "seconds": round(time.perf_counter() - t0, 2),
                         "problems": result.problems}  # fmt: skip
        rows.append(row)
        print(json.dumps(row))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "brain_extraction_synthetic.json").write_text(json.dumps(
        {"generator": config.to_dict(), "seed": args.seed, "heads": rows}, indent=2))
    lines = ["# deepbet on synthetic heads with tumours "
             "(`benchmarks/brain_extraction_synthetic.py`)", "",
             "Whole generated heads (1.5 mm, skull on, random MR-like contrasts, native or thick "
             "slices as drawn); Dice of deepbet's mask against the generator's brain; "
             "'tumour inside' = fraction of the tumour within the mask.", "",
             "| head | brain (ml) | tumour (ml) | T1, T1ce resolution | Dice T1ce | tumour inside "
             "(T1ce) | Dice T1 | tumour inside (T1) | s (T1ce) |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        res = ", ".join(f"{x[0]} {float(x[2]):.1f} mm" if x[0] != "native" else "native"
                        for x in r["resolution"])  # fmt: skip
        lines.append(f"| {r['head']} | {r['truth_ml']} | {r['tumour_ml']} | {res} | "
                     f"{r['t1ce']['dice']:.3f} | {r['t1ce']['tumour_inside']:.3f} | "
                     f"{r['t1']['dice']:.3f} | {r['t1']['tumour_inside']:.3f} | "
                     f"{r['t1ce']['seconds']:.1f} |")  # fmt: skip
    for name in ("t1ce", "t1"):
        d = [r[name]["dice"] for r in rows]
        lines.append(f"\nMean Dice {name}: {np.mean(d):.3f} (min {min(d):.3f}).")
    (args.out / "brain_extraction_synthetic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
