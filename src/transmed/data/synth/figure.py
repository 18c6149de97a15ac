"""Picture of one synthetic case: 4 contrasts x 3 planes through the tumour, labels overlaid.

``python -m transmed.data.synth.figure OUT.png [--seed S] [--index I]`` regenerates
``docs/images/synthetic_case.png`` (full-size case; matplotlib Agg backend).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from transmed.data.synth.case import SynthCase, generate_case
from transmed.data.synth.contrast import MODALITY_ORDER

#: BraTS label -> (name, RGBA overlay colour).
LABEL_COLOURS = {
    1: ("NCR", (1.0, 0.2, 0.2, 1.0)),
    2: ("ED", (0.2, 0.9, 0.3, 1.0)),
    4: ("ET", (1.0, 0.9, 0.0, 1.0)),
}


def _planes(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices through ``centre``, oriented for display.

    Array axes point to patient Left, Posterior, Superior (BraTS), so transposing puts the
    patient's right on the image's left (radiological view) and anterior at the top.
    """
    i, j, k = centre

    def t(a: np.ndarray) -> np.ndarray:  # swap the two spatial axes, keep RGBA last
        return np.swapaxes(a, 0, 1)

    return [t(volume[:, :, k]), t(volume[:, j, :])[::-1], t(volume[i, :, :])[::-1]]


def plot_case(case: SynthCase, out_path: str | Path) -> Path:
    """Save a 4 x 3 grid (modalities x planes) through the tumour's centroid as PNG.

    Labels are drawn as outlines (NCR red, ED green, ET yellow) so the intensities under them
    stay visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    seg = case.seg
    target = np.argwhere(seg > 0) if seg.any() else np.argwhere(case.images["t1"] > 0)
    centre = tuple(int(v) for v in np.round(target.mean(axis=0)))
    sx, sy, sz = (float(s) for s in case.params["spacing_mm"])
    aspects = [sy / sx, sz / sx, sz / sy]
    fig, axes = plt.subplots(4, 3, figsize=(12, 14), facecolor="black")
    label_planes = _planes(seg, centre)
    brain_planes = _planes(case.images["t1"] > 0, centre)
    crops = []  # zoom each plane to the brain (+ 4 voxels)
    for plane in brain_planes:
        rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        crops.append(
            (slice(max(rows[0] - 4, 0), rows[-1] + 5), slice(max(cols[0] - 4, 0), cols[-1] + 5))
        )
    for row, name in enumerate(MODALITY_ORDER):
        image = case.images[name].astype(np.float32)
        vmax = float(np.percentile(image[image > 0], 99.7))
        for col, (plane, aspect) in enumerate(zip(_planes(image, centre), aspects, strict=True)):
            ax = axes[row, col]
            ax.imshow(plane[crops[col]], cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
            for value in (2, 4, 1):  # outlines keep the image visible; NCR on top
                colour = LABEL_COLOURS[value][1]
                mask = (label_planes[col][crops[col]] == value).astype(np.float32)
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=[colour[:3]], linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name.upper(), color="white", fontsize=13)
            if row == 0:
                ax.set_title(("axial", "coronal", "sagittal")[col], color="white", fontsize=13)
    handles = [Patch(color=c[:3], label=n) for n, c in LABEL_COLOURS.values()]
    fig.legend(
        handles=handles, loc="lower center", ncol=3, fontsize=12, frameon=False, labelcolor="white"
    )
    vols = case.params["label_volumes_voxels"]
    fig.suptitle(
        f"{case.case_id} (seed {case.params['seed']}): synthetic case on MNI ICBM152 anatomy, "
        f"WT {vols['WT']} / TC {vols['TC']} / ET {vols['ET']} voxels",
        color="white",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90, facecolor="black")
    plt.close(fig)
    return out_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    print(plot_case(generate_case(args.seed, args.index), args.out))


if __name__ == "__main__":
    main()
