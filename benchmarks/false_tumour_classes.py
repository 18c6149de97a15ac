"""Where false tumour falls: the generator's tissue class under every falsely predicted WT voxel.

The decision pools of ``benchmarks/postprocess_threshold.py --write-cases`` store each case's
image and tumour labels, not the tissue classes it was drawn from. This script redraws each
case's fine class map with the pool's own seeds (``draw_sample(..., whole=True)``, the same call
``--write-cases`` made), checks that it reproduces the stored labels exactly, predicts the case
on the network grid with the shipped clean-up, and sums the falsely predicted WT per class:

- on tumour-free heads: all predicted WT;
- on tumour cases: predicted WT outside the reference, split into "near" (within
  ``--near-mm`` of the reference WT, a boundary error) and "away" (a separate false finding).

Rates are per millilitre of each class in the heads scored (false ml / class ml), so a small
class that is often mistaken (white-matter hyperintensities) is not hidden by a large one.

    python benchmarks/false_tumour_classes.py --models v2_1=generalist,unet=CKPT \\
        --cases W/pool12/decision W/pool13/decision --out DIR --name false_wt_classes \\
        --figure s12_028_1   # optional: the first model's false WT on one case, as a picture
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def figure(image: np.ndarray, wt: np.ndarray, title: str, out: Path) -> None:
    """The four series on four axial slices through ``wt`` (network grid), ``wt`` outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = np.nonzero(wt.sum((0, 1)))[0]
    picks = (np.linspace(zs.min(), zs.max(), 4).round().astype(int) if zs.size
             else [image.shape[3] // 2] * 4)  # fmt: skip
    fig, ax = plt.subplots(4, 4, figsize=(12, 12))
    for c, series in enumerate(("T1", "T1ce", "T2", "FLAIR")):
        for k, z in enumerate(picks):
            a = ax[c, k]
            a.imshow(np.rot90(image[c, :, :, z]), cmap="gray")
            a.axis("off")
            if wt[:, :, z].any():
                a.contour(np.rot90(wt[:, :, z]), [0.5], colors="c", linewidths=0.8)
            a.set_title(f"{series}, z {z}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="name=checkpoint_or_shipped_name,...")
    ap.add_argument("--cases", type=Path, nargs="+", required=True,
                    help="decision folders written by postprocess_threshold.py --write-cases")
    ap.add_argument("--scan", type=int, default=70, help="the --scan the pools were written with")
    ap.add_argument("--near-mm", type=float, default=10.0)
    ap.add_argument("--min-component", type=float, default=250.0)
    ap.add_argument("--et-min", type=float, default=0.0)
    ap.add_argument("--coreless", default="20", help="coreless-WT margin in mm, or 'off'")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="false_wt_classes")
    ap.add_argument("--figure", help="a case's stem: draw the first model's WT on it")
    args = ap.parse_args()

    import torch
    from scipy import ndimage

    from transmed.data.generator import LabelMapPool
    from transmed.data.generator.appearance import GEN_CLASSES
    from transmed.data.generator.dataset import sample_rng
    from transmed.data.generator.sample import draw_sample, fine_to_internal
    from transmed.data.labels import labels_to_regions, regions_to_labels
    from transmed.inference.core import predict_probabilities
    from transmed.inference.postprocess import PostprocessConfig, postprocess_labels
    from transmed.io.atomic import atomic_write_text
    from transmed.models.checkpoint import load_model
    from transmed.models.pretrained import resolve_model
    from transmed.training.generalist import GENERALIST_SPACING, generalist_generator
    from transmed.transforms.store import load_arrays

    spacing = GENERALIST_SPACING
    vox_ml = spacing**3 / 1000.0
    coreless = args.coreless.strip() != "off"
    pp = PostprocessConfig(args.min_component, args.et_min, coreless,
                           float(args.coreless) if coreless else 0.0)  # fmt: skip
    gen_cfg = generalist_generator((64, 64, 64))
    nets = {}
    for kv in args.models.split(","):
        name, src = kv.split("=", 1)
        nets[name] = load_model(resolve_model(src) if not Path(src).exists() else Path(src)).eval()
    kinds = ("tumour_free", "near", "away")
    false_ml = {n: {k: np.zeros(len(GEN_CLASSES)) for k in kinds} for n in nets}
    class_ml = {"tumour_free": np.zeros(len(GEN_CLASSES)), "tumour": np.zeros(len(GEN_CLASSES))}
    per_case: dict[str, dict] = {n: {} for n in nets}
    n_cases = {"tumour_free": 0, "tumour": 0}
    pools: dict[int, LabelMapPool] = {}
    for folder in args.cases:
        for path in sorted(folder.glob("*.npz")):
            meta = json.loads(path.with_suffix(".json").read_text())
            seed, index = (int(v) for v in meta["key"])
            draw = int(path.stem.rsplit("_", 1)[1])
            if seed not in pools:
                pools[seed] = LabelMapPool(folder.parent / "labelmaps", args.scan, seed, spacing)
            image, label = load_arrays(path)
            _, fine, _ = draw_sample(pools[seed].get(index), sample_rng(seed, draw, index),
                                     gen_cfg, whole=True,
                                     erase=bool(meta.get("tumour_erased")))  # fmt: skip
            if not np.array_equal(fine_to_internal(fine), label):
                raise SystemExit(f"{path}: the redrawn class map does not reproduce the stored "
                                 "labels (another generator version or --scan?)")  # fmt: skip
            ref = labels_to_regions(label)[0]
            kind = "tumour" if ref.any() else "tumour_free"
            n_cases[kind] += 1
            class_ml[kind] += np.bincount(fine.ravel().astype(np.int64),
                                          minlength=len(GEN_CLASSES)) * vox_ml  # fmt: skip
            near = None
            if kind == "tumour":
                near = ndimage.distance_transform_edt(~ref, sampling=(spacing,) * 3) <= args.near_mm
            for name, net in nets.items():
                with torch.no_grad():
                    prob = predict_probabilities(net, image, roi_size=(64, 64, 64), overlap=0.5,
                                                 precision="fp32")  # fmt: skip
                wt = labels_to_regions(postprocess_labels(regions_to_labels(prob),
                                                          (spacing,) * 3, pp))[0]  # fmt: skip
                parts = ({"tumour_free": wt} if near is None else
                         {"near": wt & ~ref & near, "away": wt & ~ref & ~near})  # fmt: skip
                row = {}
                for part, mask in parts.items():
                    ml = np.bincount(fine[mask].astype(np.int64),
                                     minlength=len(GEN_CLASSES)) * vox_ml  # fmt: skip
                    false_ml[name][part] += ml
                    row[part] = {GEN_CLASSES[c]: round(float(v), 3) for c, v in enumerate(ml) if v}
                per_case[name][path.stem] = row
                if path.stem == args.figure and name == next(iter(nets)):
                    args.out.mkdir(parents=True, exist_ok=True)
                    what = "false WT" if kind == "tumour_free" else "WT"
                    figure(image, wt, f"{path.stem} ({kind.replace('_', '-')}, generated): "
                           f"{name}'s {what} ({wt.sum() * vox_ml:.1f} ml) outlined",
                           args.out / f"{name}_{path.stem}.png")  # fmt: skip
            print(path.stem, kind, {n: per_case[n][path.stem] for n in nets}, flush=True)

    def table(name: str) -> list[str]:
        rows = []
        for part in kinds:
            tissue = class_ml["tumour_free" if part == "tumour_free" else "tumour"]
            v = false_ml[name][part]
            total = float(v.sum())
            cells = []
            for c in np.argsort(-v):
                if v[c] <= 0:
                    continue
                rate = f"{100 * v[c] / tissue[c]:.2f} %" if tissue[c] > 0 else "–"
                cells.append(f"{GEN_CLASSES[c]} {v[c]:.1f} ({100 * v[c] / total:.0f} %; {rate})")
            rows.append(f"| {name} | {part} | {total:.1f} | " + ", ".join(cells) + " |")
        return rows

    summary = {
        "cases": [str(p) for p in args.cases], "n_cases": n_cases, "near_mm": args.near_mm,
        "postprocess": {"min_component_mm3": args.min_component, "et_min_mm3": args.et_min,
                        "coreless_margin_mm": args.coreless},
        "classes": list(GEN_CLASSES),
        "class_ml": {k: {GEN_CLASSES[c]: round(float(x), 1) for c, x in enumerate(v) if x}
                     for k, v in class_ml.items()},
        "false_wt_ml": {n: {k: {GEN_CLASSES[c]: round(float(x), 3) for c, x in enumerate(v) if x}
                            for k, v in parts.items()} for n, parts in false_ml.items()},
        "per_case": per_case,
    }  # fmt: skip
    lines = [
        "# Where false WT falls, by the generator's tissue class",
        "",
        f"{n_cases['tumour']} tumour cases and {n_cases['tumour_free']} tumour-free heads "
        f"({', '.join(str(p) for p in args.cases)}), network grid, clean-up "
        f"{args.min_component:g}/{args.et_min:g}/{args.coreless}. `near`: false WT within "
        f"{args.near_mm:g} mm of the reference WT; `away`: farther. Each class: false ml "
        "(share of the row's false WT; false ml per ml of that class in the heads scored). "
        "`air` is outside the label map's brain (the extra-cerebral layers and background).",
        "",
        "| model | where | false WT ml | by class |",
        "|---|---|---:|---|",
    ]
    for name in nets:
        lines += table(name)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.name}.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
