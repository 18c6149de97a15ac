"""Overlap and surface metrics of binary masks: Dice, HD95 (mm), sensitivity, specificity.

Pure numpy/scipy functions on bool masks ``(X, Y, Z)`` with a voxel spacing in mm; the BraTS
regions (WT, TC, ET) come from internal labels via :func:`transmed.data.labels.labels_to_regions`.

Conventions for empty masks (the BraTS challenge's, see ``rachitsaluja/BraTS-2023-Metrics``,
``brats_2023_metrics/surface_distance/brats_metrics.py``):

- both masks empty: Dice 1, HD95 0 mm (nothing to find, nothing found);
- exactly one empty: Dice 0, HD95 :data:`HD95_ONE_EMPTY_MM` = 373.13 mm, the diagonal of the
  240 × 240 × 155 1-mm BraTS volume, the largest distance possible on a BraTS grid (the BraTS
  code's surface-distance routine returns inf there, which its reports cap at 374).

HD95 is written here with scipy rather than called from MONAI
(``monai.metrics.compute_hausdorff_distance``): inputs are numpy arrays read from NIfTI, and a
240 × 240 × 155 case would otherwise be copied into one-hot torch tensors per region, pulling
torch into a worker pool that only needs numpy; the definition is MONAI's exactly (surface =
mask XOR its binary erosion, array borders count as background; Euclidean distances in mm from
each surface voxel of one mask to the nearest surface voxel of the other; the 95th percentile
with linear interpolation in each direction; the larger of the two), and the tests check the
values against MONAI on random masks with anisotropic spacing. The BraTS scripts use DeepMind's
``surface-distance`` (surfels weighted by area), which gives slightly different values on the
same masks; the conventions above are theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from transmed.data.labels import REGIONS, labels_to_regions

#: HD95 when exactly one mask is empty: sqrt(240² + 240² + 155²) mm, the BraTS volume diagonal.
HD95_ONE_EMPTY_MM = float(np.sqrt(240.0**2 + 240.0**2 + 155.0**2))  # 373.128...

#: Metric names of :func:`mask_metrics`, in CSV column order.
METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity")


def mask_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of the same shape; ValueError otherwise."""
    p = np.asarray(pred)
    r = np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref masks differ in shape: {p.shape} vs {r.shape}")
    return p.astype(bool, copy=False), r.astype(bool, copy=False)


def check_spacing(spacing: Sequence[float], ndim: int = 3) -> tuple[float, ...]:
    """``spacing`` as a tuple of ``ndim`` finite positive floats (mm); ValueError otherwise."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing: expected {ndim} numbers in mm, got {spacing!r}") from None
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing: expected {ndim} finite positive values in mm, got {spacing!r}")
    return values


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2 |P ∩ R| / (|P| + |R|)`` of two masks of equal shape.

    Both empty: 1.0; exactly one empty: 0.0.
    """
    p, r = mask_pair(pred, ref)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & r)) / total


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True-positive rate ``TP / (TP + FN)`` (recall of the reference voxels).

    Empty reference: 1.0 if the prediction is empty too, else 0.0 — the BraTS (GaNDLF) code's
    values (its ``TP / (TP + FN + eps)`` is 0 there, and it sets 1 when both are empty).
    """
    p, r = mask_pair(pred, ref)
    n_ref = int(np.count_nonzero(r))
    if n_ref == 0:
        return 1.0 if not p.any() else 0.0
    return int(np.count_nonzero(p & r)) / n_ref


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True-negative rate ``TN / (TN + FP)``, i.e. :func:`sensitivity` of the complements.

    A reference covering the whole array (no negatives) gives 1.0 if the prediction covers it
    all too, else 0.0 — the dual of the sensitivity convention (never met on brain MRI).
    """
    p, r = mask_pair(pred, ref)
    return sensitivity(~p, ~r)


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a bool mask: ``mask XOR binary_erosion(mask)``.

    The erosion uses the cross-shaped (6-neighbour in 3D) structuring element and treats
    everything outside the array as background, so mask voxels on the array border are surface
    (MONAI pads by one voxel before eroding, which is the same).
    """
    m = np.asarray(mask, dtype=bool)
    return m ^ ndimage.binary_erosion(m)


def bbox_crop(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of a non-empty ``mask``'s bounding box widened by ``margin`` voxels (clipped)."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo, hi = int(idx[0]) - margin, int(idx[-1]) + 1 + margin
        slices.append(slice(max(lo, 0), min(hi, mask.shape[axis])))
    return tuple(slices)


def directed_surface_distances(
    from_mask: np.ndarray, to_mask: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``from_mask`` to the nearest surface voxel of
    ``to_mask``; both masks must be non-empty.

    Returns:
        float64 ``(n_surface_voxels_of_from_mask,)``.
    """
    spacing = check_spacing(spacing, np.ndim(from_mask))
    a, b = mask_pair(from_mask, to_mask)
    if not a.any() or not b.any():
        raise ValueError("directed_surface_distances: both masks must be non-empty")
    # Every surface voxel lies inside the union's bounding box, so the distance transform of a
    # crop (one voxel of margin keeps the erosion's border behaviour) is exact and much smaller.
    box = bbox_crop(a | b, margin=1)
    a, b = a[box], b[box]
    edt = ndimage.distance_transform_edt(~surface(b), sampling=spacing)
    return np.asarray(edt[surface(a)], dtype=np.float64)


def hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    percentile: float = 95.0,
    one_empty: float = HD95_ONE_EMPTY_MM,
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI's definition, see module doc).

    ``max(P95(d(pred surface -> ref surface)), P95(d(ref surface -> pred surface)))`` with
    ``numpy.percentile``'s linear interpolation (as ``torch.quantile`` in MONAI).

    Args:
        pred, ref: bool masks ``(X, Y, Z)`` on the same grid.
        spacing: voxel size in mm along the array axes.
        percentile: 95 for HD95; 100 gives the classical Hausdorff distance.
        one_empty: value when exactly one mask is empty (BraTS: 373.13 mm; lesion-wise: 374).

    Returns:
        Distance in mm; 0.0 when both masks are empty.
    """
    p, r = mask_pair(pred, ref)
    spacing = check_spacing(spacing, p.ndim)
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile: expected a value in [0, 100], got {percentile}")
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return 0.0
    if not p_any or not r_any:
        return float(one_empty)
    d_pr = directed_surface_distances(p, r, spacing)
    d_rp = directed_surface_distances(r, p, spacing)
    return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))


def mask_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> dict[str, float]:
    """All of :data:`METRICS` plus volumes (mm³) for one pair of bool masks ``(X, Y, Z)``."""
    spacing = check_spacing(spacing, np.ndim(pred))
    p, r = mask_pair(pred, ref)
    voxel_mm3 = float(np.prod(spacing))
    return {
        "dice": dice(p, r),
        "hd95": hd95(p, r, spacing),
        "sensitivity": sensitivity(p, r),
        "specificity": specificity(p, r),
        "ref_volume_mm3": int(np.count_nonzero(r)) * voxel_mm3,
        "pred_volume_mm3": int(np.count_nonzero(p)) * voxel_mm3,
    }


def region_metrics(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    lesionwise: bool = False,
    challenge: str = "BraTS-GLI",
) -> dict[str, dict[str, float]]:
    """Metrics of each BraTS region from two internal label maps.

    Args:
        pred_labels, ref_labels: ``(X, Y, Z)`` internal labels {0, 1, 2, 3} on the same grid
            (0 background, 1 necrotic/non-enhancing core, 2 oedema, 3 enhancing).
        spacing: voxel size in mm.
        lesionwise: add the BraTS 2023 lesion-wise scores (see
            :func:`transmed.evaluation.lesionwise.lesionwise_metrics`) with a ``lesion_`` prefix.
        challenge: lesion-wise parameter set (dilation, volume threshold).

    Returns:
        ``{"WT": {"dice": ..., "hd95": ..., ...}, "TC": {...}, "ET": {...}}``.
    """
    spacing = check_spacing(spacing)
    if np.shape(pred_labels) != np.shape(ref_labels):
        raise ValueError(
            f"pred and ref label maps differ in shape: {np.shape(pred_labels)} vs "
            f"{np.shape(ref_labels)}"
        )
    if np.ndim(ref_labels) != 3:
        raise ValueError(f"label maps: expected 3D (X, Y, Z), got shape {np.shape(ref_labels)}")
    pred_regions = labels_to_regions(pred_labels)  # (3, X, Y, Z) bool
    ref_regions = labels_to_regions(ref_labels)  # (3, X, Y, Z) bool
    out: dict[str, dict[str, float]] = {}
    for i, region in enumerate(REGIONS):
        row = mask_metrics(pred_regions[i], ref_regions[i], spacing)
        if lesionwise:
            from transmed.evaluation.lesionwise import lesionwise_metrics

            lw = lesionwise_metrics(pred_regions[i], ref_regions[i], spacing, region,
                                    challenge=challenge)
            row.update({f"lesion_{k}": v for k, v in lw.items() if k != "region"})
        out[region] = row
    return out
