"""BraTS 2023 lesion-wise Dice and HD95 of one region (WT, TC or ET).

Follows the challenge's reference code, ``rachitsaluja/BraTS-2023-Metrics`` (``eval.py`` and
``brats_2023_metrics/surface_distance/brats_metrics.py``: ``get_lesion_wise_score`` and
``get_lesion_wise_results``):

1. GT lesions are the 26-connected components of the reference mask; components that touch
   once the whole reference mask is dilated (``iterations`` steps of the 18-neighbour
   structuring element ``generate_binary_structure(3, 2)``) are merged into one lesion.
2. Each GT lesion is dilated the same way; every 26-connected component of the prediction that
   intersects the dilated lesion is matched to it (a component may match several lesions), and
   the lesion's Dice and HD95 are computed between the lesion and the union of its matched
   components (HD95 374 mm if none matched).
3. GT lesions of volume ≤ ``min_volume_mm3`` (voxel count × voxel volume, as the BraTS code;
   50 mm³ = 50 voxels on BraTS's 1-mm grid) are left out of the scores and of the TP/FN
   counts; components matched to them are not false positives either.
4. Every prediction component matched to no GT lesion is a false positive, scored Dice 0 and
   HD95 374 mm.
5. Lesion-wise Dice = Σ Dice(kept lesions) / (n_kept + n_FP); lesion-wise HD95 =
   (Σ HD95(kept lesions) + 374 n_FP) / (n_kept + n_FP); with no kept lesion and no FP (both
   empty, or only tiny GT lesions and no stray prediction) Dice 1 and HD95 0, as the BraTS
   code's NaN replacement.

Dilation/threshold per challenge are the BraTS code's ``get_challenge_parameters``. Connected
components come from ``scipy.ndimage.label`` with a 3×3×3 structure (= cc3d's 26-connectivity).
HD95 is :func:`transmed.evaluation.metrics.hd95` (MONAI's voxel-surface definition) rather
than DeepMind's surfel-area-weighted ``surface-distance`` that the BraTS code uses, so lesion
HD95 values can differ from the official script by a fraction of a voxel; Dice and all the
matching are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from transmed.evaluation.metrics import bbox_crop, check_spacing, dice, hd95, mask_pair

#: HD95 (mm) of a false-positive or missed lesion, as the BraTS 2023 code (its inf -> 374).
LESION_MISS_HD95_MM = 374.0

#: ``challenge -> (dilation iterations, GT lesion volume threshold in mm³)``, from the BraTS
#: 2023 metrics code. A lesion is scored only if its volume is strictly above the threshold.
CHALLENGE_PARAMETERS: dict[str, tuple[int, float]] = {
    "BraTS-GLI": (3, 50.0),
    "BraTS-SSA": (3, 50.0),
    "BraTS-MEN": (1, 50.0),
    "BraTS-PED": (3, 50.0),
    "BraTS-MET": (1, 2.0),
}

_CC26 = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity for connected components
_DILATE18 = ndimage.generate_binary_structure(3, 2)  # 18-neighbour dilation, as BraTS


@dataclass(frozen=True)
class LesionMatch:
    """One (merged) GT lesion and the prediction components matched to it."""

    lesion: int  # label in the merged GT lesion map, 1..n
    volume_mm3: float
    matched: tuple[int, ...]  # prediction component labels intersecting the dilated lesion
    dice: float
    hd95: float  # mm; LESION_MISS_HD95_MM when nothing matched
    counted: bool  # volume above the threshold


def challenge_parameters(challenge: str) -> tuple[int, float]:
    """``(dilation iterations, volume threshold mm³)`` of a BraTS 2023 challenge name."""
    try:
        return CHALLENGE_PARAMETERS[challenge]
    except KeyError:
        raise ValueError(
            f"challenge: unknown {challenge!r}; expected one of {sorted(CHALLENGE_PARAMETERS)}"
        ) from None


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    # scipy treats iterations=0 as "until nothing changes"; here 0 means no dilation.
    if iterations == 0:
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=_DILATE18, iterations=iterations)


def merged_gt_lesions(ref: np.ndarray, iterations: int) -> tuple[np.ndarray, int]:
    """GT lesion map ``(X, Y, Z)`` int32 (0 background, lesions 1..n) and n: 26-connected
    components of ``ref``, merged where they touch after dilating ``ref`` by ``iterations``."""
    ref = np.asarray(ref, dtype=bool)
    dilated_cc, n = ndimage.label(_dilate(ref, iterations), structure=_CC26)
    # Every dilated component contains reference voxels, so the labels stay 1..n.
    return np.where(ref, dilated_cc, 0).astype(np.int32), int(n)


def lesion_matches(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    dilation_iterations: int = 3,
    min_volume_mm3: float = 50.0,
) -> tuple[list[LesionMatch], list[int]]:
    """Match prediction components to GT lesions (steps 1–4 of the module doc).

    Args:
        pred, ref: bool masks ``(X, Y, Z)`` of one region on the same grid.
        spacing: voxel size in mm (volumes and HD95).
        dilation_iterations: dilation steps for merging and matching (≥ 0).
        min_volume_mm3: GT lesions of at most this volume are not counted.

    Returns:
        ``(lesions, false_positive_components)``: one :class:`LesionMatch` per merged GT
        lesion, and the labels of prediction components matched to no lesion.
    """
    p, r = mask_pair(pred, ref)
    if p.ndim != 3:
        raise ValueError(f"masks: expected 3D (X, Y, Z), got shape {p.shape}")
    spacing = check_spacing(spacing)
    if int(dilation_iterations) != dilation_iterations or dilation_iterations < 0:
        raise ValueError(f"dilation_iterations: expected an integer ≥ 0, got {dilation_iterations}")
    if not np.isfinite(min_volume_mm3) or min_volume_mm3 < 0:
        raise ValueError(f"min_volume_mm3: expected a finite value ≥ 0, got {min_volume_mm3}")
    it = int(dilation_iterations)
    voxel_mm3 = float(np.prod(spacing))
    if p.any() or r.any():
        # Everything below is translation-invariant, so work in the bounding box of both masks
        # widened by the dilation (and ≥ 1 voxel, so erosion at the box edge sees background).
        roi = bbox_crop(p | r, margin=max(it, 1))
        p, r = p[roi], r[roi]
    pred_cc, n_pred = ndimage.label(p, structure=_CC26)
    lesions, n_lesions = merged_gt_lesions(r, it)
    boxes = ndimage.find_objects(lesions)
    matched_any: set[int] = set()
    out: list[LesionMatch] = []
    for k in range(1, n_lesions + 1):
        # The dilated lesion lies within its bounding box widened by `it` voxels.
        box = tuple(
            slice(max(s.start - it, 0), min(s.stop + it, dim))
            for s, dim in zip(boxes[k - 1], lesions.shape, strict=True)
        )
        near = _dilate(lesions[box] == k, it)
        matched = tuple(int(c) for c in np.unique(pred_cc[box][near]) if c != 0)
        matched_any.update(matched)
        gt_k = lesions == k
        pred_k = np.isin(pred_cc, matched) if matched else np.zeros_like(gt_k)
        volume = int(np.count_nonzero(gt_k)) * voxel_mm3
        out.append(
            LesionMatch(
                lesion=k,
                volume_mm3=volume,
                matched=matched,
                dice=dice(pred_k, gt_k),
                hd95=hd95(pred_k, gt_k, spacing, one_empty=LESION_MISS_HD95_MM),
                counted=volume > min_volume_mm3,
            )
        )
    false_positives = [c for c in range(1, n_pred + 1) if c not in matched_any]
    return out, false_positives


def lesionwise_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    region: str = "",
    *,
    challenge: str = "BraTS-GLI",
    dilation_iterations: int | None = None,
    min_volume_mm3: float | None = None,
) -> dict[str, float | int | str]:
    """BraTS 2023 lesion-wise Dice and HD95 (mm) of one region's bool masks ``(X, Y, Z)``.

    Args:
        pred, ref: bool masks of one region (e.g. WT) on the same grid.
        spacing: voxel size in mm.
        region: region name, echoed in the result (all regions use the same parameters).
        challenge: parameter set of :data:`CHALLENGE_PARAMETERS` (GLI: 3 dilations, 50 mm³).
        dilation_iterations, min_volume_mm3: override the challenge's values.

    Returns:
        ``{"region", "dice", "hd95", "tp", "fn", "fp"}``: the lesion-wise scores and the lesion
        counts (TP/FN: counted GT lesions with/without a matched component; FP: unmatched
        prediction components).
    """
    default_it, default_vol = challenge_parameters(challenge)
    it = default_it if dilation_iterations is None else dilation_iterations
    vol = default_vol if min_volume_mm3 is None else min_volume_mm3
    lesions, fps = lesion_matches(
        pred, ref, spacing, dilation_iterations=it, min_volume_mm3=vol
    )
    kept = [m for m in lesions if m.counted]
    denom = len(kept) + len(fps)
    if denom == 0:
        score_dice, score_hd95 = 1.0, 0.0
    else:
        score_dice = sum(m.dice for m in kept) / denom
        score_hd95 = (sum(m.hd95 for m in kept) + LESION_MISS_HD95_MM * len(fps)) / denom
    return {
        "region": region,
        "dice": float(score_dice),
        "hd95": float(score_hd95),
        "tp": sum(1 for m in kept if m.matched),
        "fn": sum(1 for m in kept if not m.matched),
        "fp": len(fps),
    }
