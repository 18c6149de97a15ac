"""N4 bias correction in one pass and in two passes, against none (an experiment, not a
product path): predicted WT / TC / ET volumes per case on the network grid.

    python benchmarks/bias_correction_two_pass.py CASE_DIR [CASE_DIR ...] \
        --out benchmarks/results/generalist/bias_correction_n4/two_pass

Each case folder holds its four series (``*_t1``, ``*_t1ce`` or ``*_t1c``, ``*_t2``,
``*_flair`` NIfTI). The shipped model's preprocessing (brain extraction, co-registration,
z-score) runs once; then, on the network grid, with the brain mask as the image's non-zero
voxels:

- ``off``: the model on the preprocessed image (pass 1);
- ``n4``: each series un-z-scored, divided by N4's field fitted in the whole brain mask,
  z-scored again (what ``--bias-correction n4`` does, up to where the z-score mask is taken);
- ``two-pass``: the same, with the field fitted in the brain mask *minus pass 1's WT dilated by
  ``--dilate`` voxels* (3, as ``predict`` does), so that a tumour the model found is not taken
  for bias.

Volumes are the thresholded, nested labels before any clean-up (ml).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", type=Path, nargs="+")
    ap.add_argument("--model", default="generalist")
    ap.add_argument("--out", type=Path, required=True, help="results stem (.json and .md)")
    ap.add_argument("--dilate", type=int, default=3,
                    help="voxels by which pass 1's WT is grown before it is left out of the fit")
    args = ap.parse_args()
    import torch
    from scipy import ndimage

    from transmed.data.labels import regions_to_labels
    from transmed.inference.predictor import Predictor
    from transmed.io.atomic import atomic_write_text
    from transmed.io.nifti import load_volume
    from transmed.models.pretrained import resolve_model
    from transmed.transforms.bias_field import renormalise_without

    torch.set_num_threads(2)
    pred = Predictor.from_path(resolve_model(args.model))
    names = {"t1": ("_t1.",), "t1ce": ("_t1ce.", "_t1c."), "t2": ("_t2.",), "flair": ("_flair.",)}

    def volumes(labels: np.ndarray, spacing: np.ndarray) -> list[float]:
        v = float(np.prod(spacing)) / 1000.0
        return [round(float(m.sum()) * v, 2) for m in
                (labels > 0, (labels == 1) | (labels == 3), labels == 3)]  # fmt: skip

    rows = []
    for folder in args.cases:
        t0 = time.perf_counter()
        files = {m: next((p for p in sorted(folder.glob("*.nii.gz"))
                          if any(k in p.name for k in keys)), None) for m, keys in names.items()}
        case = pred.prepare({m: load_volume(p) for m, p in files.items() if p}, folder.name)
        img, rec = case.image, case.record
        spacing = rec.spacing
        brain = np.any(img != 0, axis=0)
        first = regions_to_labels(pred.probabilities(img) > 0.5)
        nothing = np.zeros_like(brain)  # one pass: the field fitted in the whole brain
        # two passes: without pass 1's tumour, as `predict --bias-correction n4_two_pass` does
        tumour = ndimage.binary_dilation(first > 0, iterations=args.dilate)
        one, two = (regions_to_labels(pred.probabilities(renormalise_without(
            img, brain, rec.intensity_mean, rec.intensity_std, out, spacing)[0]) > 0.5)
            for out in (nothing, tumour))  # fmt: skip
        row = {"case": folder.name, "off": volumes(first, spacing), "n4": volumes(one, spacing),
               "two_pass": volumes(two, spacing),
               "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    md = ["# N4 in one and two passes: predicted WT / TC / ET (ml, network grid, no clean-up)",
          "", f"Two-pass exclusion: pass 1's WT dilated by {args.dilate} voxels.",
          "", "| case | off | n4 (one pass) | two-pass |", "|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['case']} | " + " | ".join(" / ".join(f"{v:.1f}" for v in r[k])
                                                   for k in ("off", "n4", "two_pass")) + " |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
