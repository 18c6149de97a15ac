"""Figures of ``transmed compare`` and ``transmed report``, returned as PNG bytes.

Each function draws one matplotlib figure (Agg backend, no display needed) and returns the
encoded PNG, so a caller can write it to a file atomically or embed it in HTML as base64.
Label colours follow the usual BraTS pictures: core (NCR) red, oedema green, enhancing yellow.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Internal label -> (name, RGB) of the overlays (0 background is transparent).
LABEL_COLOURS: dict[int, tuple[str, tuple[float, float, float]]] = {
    1: ("necrotic/non-enhancing core", (0.90, 0.15, 0.15)),
    2: ("oedema", (0.20, 0.80, 0.25)),
    3: ("enhancing", (1.00, 0.85, 0.10)),
}
REGION_COLOURS: dict[str, str] = {"WT": "tab:green", "TC": "tab:red", "ET": "tab:orange",
                                  "mean": "black"}
FOLD_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """Encode a matplotlib figure as PNG and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    _pyplot().close(fig)
    return buffer.getvalue()


def box_plots(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    metric_name: str,
    *,
    reference: str | None = None,
) -> bytes:
    """One panel per region, one box per run (median, quartiles, 1.5 IQR whiskers, points).

    Args:
        values: ``{region: {run label: per-case values}}`` (regions in panel order).
        metric_name: y-axis label, e.g. ``"Dice"`` or ``"HD95 (mm)"``.
        reference: label of the reference run (its box is drawn grey).
    """
    plt = _pyplot()
    regions = list(values)
    labels = list(next(iter(values.values()))) if values else []
    width = max(3.0, 0.55 * len(labels) + 1.4)
    fig, axes = plt.subplots(1, len(regions), figsize=(width * len(regions), 4.2), squeeze=False)
    rng = np.random.default_rng(0)  # jitter of the case points only
    for ax, region in zip(axes[0], regions, strict=True):
        data = [list(values[region][label]) for label in labels]
        positions = np.arange(1, len(labels) + 1)
        shown = [d if d else [math.nan] for d in data]  # an empty box keeps its slot
        boxes = ax.boxplot(shown, positions=positions, widths=0.6, patch_artist=True,
                           showfliers=False)
        for label, patch in zip(labels, boxes["boxes"], strict=True):
            patch.set_facecolor("0.80" if label == reference else "tab:blue")
            patch.set_alpha(0.55)
        for pos, d in zip(positions, data, strict=True):
            if d:
                ax.scatter(pos + rng.uniform(-0.15, 0.15, len(d)), d, s=9, color="black",
                           alpha=0.6, zorder=3, linewidths=0)
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(region)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(metric_name)
    fig.suptitle(f"{metric_name} per case" + (f" (grey: reference {reference})" if reference
                                              else ""), fontsize=11)
    fig.tight_layout()
    return png_bytes(fig)


def training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> bytes:
    """Training loss and validation Dice against epoch.

    Args:
        histories: ``{name: rows}`` with one row per epoch (keys ``epoch``, ``train_loss``,
            ``val_dice_WT`` ... ``val_dice_mean``; NaN where not validated). One entry (a
            training run) draws all regions in one Dice panel; several (CV folds) draw one
            panel per region with a line per fold.
    """
    plt = _pyplot()
    single = len(histories) == 1
    regions = ["WT", "TC", "ET"] if not single else []
    n_panels = 2 if single else 1 + len(regions)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.6), squeeze=False)
    loss_ax = axes[0][0]
    for k, (name, rows) in enumerate(histories.items()):
        colour = FOLD_COLOURS[k % len(FOLD_COLOURS)]
        epochs = np.array([r.get("epoch", math.nan) for r in rows], dtype=float)
        loss = np.array([r.get("train_loss", math.nan) for r in rows], dtype=float)
        loss_ax.plot(epochs, loss, color=colour, lw=1.3, label=name)
        if single:
            for region in ("WT", "TC", "ET", "mean"):
                dice = np.array([r.get(f"val_dice_{region}", math.nan) for r in rows], dtype=float)
                ok = np.isfinite(dice)
                axes[0][1].plot(epochs[ok], dice[ok], marker="o", ms=3, lw=1.3,
                                color=REGION_COLOURS[region], label=region,
                                ls="--" if region == "mean" else "-")
        else:
            for ax, region in zip(axes[0][1:], regions, strict=True):
                dice = np.array([r.get(f"val_dice_{region}", math.nan) for r in rows], dtype=float)
                ok = np.isfinite(dice)
                ax.plot(epochs[ok], dice[ok], marker="o", ms=3, lw=1.3, color=colour, label=name)
    loss_ax.set_title("training loss")
    loss_ax.set_ylabel("loss")
    if not single:
        loss_ax.legend(fontsize=8)
    dice_axes = [axes[0][1]] if single else list(axes[0][1:])
    titles = ["validation Dice"] if single else [f"validation Dice {r}" for r in regions]
    for ax, title in zip(dice_axes, titles, strict=True):
        ax.set_title(title)
        ax.set_ylabel("Dice")
        ax.set_ylim(-0.02, 1.02)
    if single:
        axes[0][1].legend(fontsize=8, loc="lower right")
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def _label_rgba(labels: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    for value, (_, rgb) in LABEL_COLOURS.items():
        inside = labels == value
        rgba[inside, :3] = rgb
        rgba[inside, 3] = alpha
    return rgba


def _content_box(image: np.ndarray, *label_maps: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    """Bounding box (with ``margin`` voxels) of the non-zero image and tumour voxels: BraTS
    volumes are skull-stripped with wide zero borders, which would shrink the brain on screen."""
    content = image != 0
    for labels in label_maps:
        content |= labels > 0
    if not content.any():
        return tuple(slice(0, n) for n in image.shape)
    idx = np.argwhere(content)
    low = np.maximum(idx.min(axis=0) - margin, 0)
    high = np.minimum(idx.max(axis=0) + margin + 1, image.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


def case_overlay(
    image: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    centre: Sequence[int],
    *,
    title: str = "",
    image_name: str = "",
    alpha: float = 0.45,
) -> bytes:
    """Reference (top row) and prediction (bottom row) over an image, in three planes.

    Args:
        image: ``(X, Y, Z)`` intensities in RAS voxel order (x to the patient's right,
            y anterior, z superior), e.g. after :func:`transmed.evaluation.report.to_ras`.
        reference, prediction: ``(X, Y, Z)`` internal labels (0 bg, 1 NCR, 2 ED, 3 ET) on the
            same grid.
        spacing: voxel size (mm) along x, y, z, for the panels' aspect ratios.
        centre: voxel ``(x, y, z)`` the axial, coronal and sagittal slices pass through.

    The panels are cropped to the non-zero image and tumour voxels (plus a small margin).
        image_name: the background modality, for the titles.

    Both rows also outline the whole tumour of the reference (white) and of the prediction
    (cyan, dashed), so a miss or a false positive shows on either row.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    box = _content_box(image, reference, prediction)
    image, reference, prediction = image[box], reference[box], prediction[box]
    x, y, z = (int(np.clip(c - b.start, 0, b.stop - b.start - 1))
               for c, b in zip(centre, box, strict=True))
    sx, sy, sz = (float(s) for s in spacing)
    inside = image[image != 0]
    lo, hi = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)

    def planes(vol: np.ndarray) -> list[np.ndarray]:
        # Transposed so rows run along the second axis; origin="lower" puts anterior/superior
        # up and the patient's right on the right (neurological view).
        return [vol[:, :, z].T, vol[:, y, :].T, vol[x, :, :].T]

    aspects = [sy / sx, sz / sx, sz / sy]
    names = [f"axial z={z}", f"coronal y={y}", f"sagittal x={x}"]
    sides = [("L", "R"), ("L", "R"), ("P", "A")]  # (left, right) edge of each panel
    fig, axes = plt.subplots(2, 3, figsize=(11.5, 7.8), facecolor="black")
    for row, (what, labels) in enumerate((("reference", reference), ("prediction", prediction))):
        for col, (img, lab, ref_wt, pred_wt) in enumerate(zip(
            planes(image), planes(labels), planes(reference > 0), planes(prediction > 0),
            strict=True,
        )):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspects[col])
            ax.imshow(_label_rgba(lab, alpha), origin="lower", aspect=aspects[col])
            if ref_wt.any():
                ax.contour(ref_wt.astype(np.float32), levels=[0.5], colors="white",
                           linewidths=0.9, origin="lower")
            if pred_wt.any():
                ax.contour(pred_wt.astype(np.float32), levels=[0.5], colors="cyan",
                           linewidths=0.9, linestyles="dashed", origin="lower")
            ax.set_xlim(-0.5, img.shape[1] - 0.5)  # contour() would autoscale to the lines
            ax.set_ylim(-0.5, img.shape[0] - 0.5)
            ax.set_title(f"{what} · {names[col]}", color="white", fontsize=9)
            for pos, align, letter in zip((0.01, 0.99), ("left", "right"), sides[col],
                                          strict=True):
                ax.text(pos, 0.5, letter, color="white", fontsize=8, ha=align,
                        transform=ax.transAxes)
            ax.set_axis_off()
    handles = [Patch(color=rgb, label=name) for name, rgb in LABEL_COLOURS.values()]
    handles += [Line2D([], [], color="white", lw=1.2, label="reference whole tumour"),
                Line2D([], [], color="cyan", lw=1.2, ls="--", label="prediction whole tumour")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False,
               labelcolor="white")
    if title or image_name:
        fig.suptitle(title + (f"  (background: {image_name})" if image_name else ""),
                     color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    return png_bytes(fig, dpi=90)
