"""Pictures of a preprocessed case: every modality on the common grid, axial and coronal.

``python -m transmed.transforms.figures --data DIR --out PNG`` redraws
``docs/images/tcga_preprocessed.png`` from the real examination in ``shared/data/TCGA-FG-6692``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from transmed.transforms.preprocess import MODALITIES, PreprocessRecord

#: Lesion centre of TCGA-FG-6692 in world RAS mm (right frontal, original slice ~18 of 26).
TCGA_LESION_MM = (23.0, 45.0, 55.0)
TCGA_CAPTION = (
    "TCGA-FG-6692 (The Cancer Imaging Archive, TCGA glioma collections; CC BY): native scanner "
    "space, skull present, three different grids (0.9×0.9×5.5 mm, LAS).\nAfter preprocessing: "
    "RAS, T1ce reference, rigid co-registration, 1 mm isotropic, head crop, z-score per "
    "modality. Cross-hairs at the lesion (right frontal)."
)


def plot_preprocessed(
    image: np.ndarray,
    record: PreprocessRecord,
    path: str | Path,
    *,
    point_mm: tuple[float, float, float] | None = None,
    title: str = "",
    caption: str = "",
) -> Path:
    """Save a 2 × C grid: axial (top) and coronal (bottom) slices of each channel.

    Args:
        image: ``(C, X, Y, Z)`` preprocessed array (RAS axes, z-scored).
        record: its preprocessing record (for the world-to-voxel map).
        point_mm: world RAS point (mm) the slices pass through; default the array centre.
        title, caption: text above and below the panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = np.asarray(image.shape[1:])
    if point_mm is None:
        voxel = (shape - 1) // 2
    else:
        voxel = np.rint(np.linalg.inv(record.affine) @ [*point_mm, 1.0])[:3].astype(int)
        voxel = np.clip(voxel, 0, shape - 1)
    x, y, z = (int(v) for v in voxel)
    spacing = record.spacing
    n = image.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 7.6), facecolor="black")
    for c in range(n):
        channel = image[c]
        inside = channel[channel != 0]
        lo, hi = np.percentile(inside, [1, 99.5]) if inside.size else (-1.0, 1.0)
        views = [
            (channel[:, :, z].T, spacing[1] / spacing[0], x, y, f"axial z={z}"),
            (channel[:, y, :].T, spacing[2] / spacing[0], x, z, f"coronal y={y}"),
        ]
        for row, (plane, aspect, cx, cy, label) in enumerate(views):
            ax = axes[row, c]
            # origin="lower": patient's right on the right of the panel (neurological view).
            ax.imshow(plane, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect)
            ax.axhline(cy, color="yellow", lw=0.6, alpha=0.6)
            ax.axvline(cx, color="yellow", lw=0.6, alpha=0.6)
            name = MODALITIES[c] if c < len(MODALITIES) else f"channel {c}"
            ax.set_title(f"{name} - {label}", color="white", fontsize=10)
            ax.text(0.02, 0.5, "L", color="white", transform=ax.transAxes, fontsize=9)
            ax.text(0.94, 0.5, "R", color="white", transform=ax.transAxes, fontsize=9)
            ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    if caption:
        fig.text(0.5, 0.01, caption, color="white", ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, facecolor="black")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """Preprocess the TCGA example (rigid co-registration, 1 mm) and draw its picture."""
    from transmed.io.nifti import load_volume
    from transmed.transforms.preprocess import PreprocessConfig, preprocess_case

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="TCGA-FG-6692 folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    files = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}
    images = {m: load_volume(args.data / f"TCGA-FG-6692_{f}.nii.gz") for m, f in files.items()}
    config = PreprocessConfig(target_spacing=(1.0, 1.0, 1.0), coregistration="rigid")
    case = preprocess_case(images, None, config, case_id="TCGA-FG-6692")
    plot_preprocessed(
        case.image,
        case.record,
        args.out,
        point_mm=TCGA_LESION_MM,
        title="TCGA-FG-6692 after preprocessing: four modalities on one 1 mm grid",
        caption=TCGA_CAPTION,
    )


if __name__ == "__main__":
    main()
