"""Dice / HD95 / sensitivity / specificity: cross-checked against MONAI and hand counts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from transmed.evaluation.metrics import (
    HD95_ONE_EMPTY_MM,
    dice,
    hd95,
    mask_metrics,
    region_metrics,
    sensitivity,
    specificity,
    surface,
)

SPACINGS = [(1.0, 0.9, 2.5), (0.7, 1.3, 1.0)]


def _blobs(shape: tuple[int, ...], seed: int, level: float) -> np.ndarray:
    """Smooth random blobs (a few components, some touching the border)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
    return noise > level * noise.std()


def _monai(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    p = torch.from_numpy(pred[None, None].astype(np.float32))  # (B=1, C=1, X, Y, Z)
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's own deprecation notices
        d = compute_dice(p, r, include_background=True).item()
        h = compute_hausdorff_distance(
            p, r, include_background=True, percentile=95, spacing=spacing
        ).item()
    return d, h


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_dice_and_hd95_match_monai_on_random_blobs(seed: int, spacing: tuple) -> None:
    pred = _blobs((24, 20, 16), seed, 0.5)
    ref = _blobs((24, 20, 16), seed + 100, 0.3)
    assert pred.any() and ref.any() and (pred != ref).any()
    d_monai, h_monai = _monai(pred, ref, spacing)
    assert dice(pred, ref) == pytest.approx(d_monai, rel=1e-6)
    # MONAI takes the quantile of float32 distances: agreement to float32 precision.
    assert hd95(pred, ref, spacing) == pytest.approx(h_monai, rel=1e-4, abs=1e-4)
    assert h_monai > 1.0  # the masks are far enough apart for HD95 to be informative


@pytest.mark.parametrize("seed", [5, 6])
def test_hd95_matches_monai_on_sparse_noise_and_is_symmetric(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.random((24, 20, 16)) > 0.97
    ref = rng.random((24, 20, 16)) > 0.9
    spacing = (1.0, 0.9, 2.5)
    _, h_monai = _monai(pred, ref, spacing)
    assert hd95(pred, ref, spacing) == pytest.approx(h_monai, rel=1e-4)
    assert hd95(pred, ref, spacing) == pytest.approx(hd95(ref, pred, spacing))


def test_hd95_uses_spacing_along_each_axis() -> None:
    ref = np.zeros((10, 10, 10), dtype=bool)
    ref[2:5, 2:5, 2:5] = True
    pred = np.roll(ref, 3, axis=2)  # shift 3 voxels along z only
    assert hd95(pred, ref, (1.0, 1.0, 2.5)) == pytest.approx(7.5)
    assert hd95(pred, ref, (2.5, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(pred, ref, (1.0, 1.0, 2.5), percentile=100) == pytest.approx(7.5)


def test_surface_counts_border_voxels_and_skips_interior() -> None:
    mask = np.ones((5, 5, 5), dtype=bool)  # fills the array: its border is its surface
    s = surface(mask)
    assert s.sum() == 125 - 27
    assert not s[1:4, 1:4, 1:4].any()


def test_sensitivity_and_specificity_by_hand() -> None:
    ref = np.zeros(20, dtype=bool)
    pred = np.zeros(20, dtype=bool)
    ref[:8] = True  # 8 positives, 12 negatives
    pred[:5] = True  # TP 5
    pred[10:13] = True  # FP 3
    # TP 5, FN 3, FP 3, TN 9
    assert sensitivity(pred, ref) == pytest.approx(5 / 8)
    assert specificity(pred, ref) == pytest.approx(9 / 12)
    assert dice(pred, ref) == pytest.approx(2 * 5 / (8 + 8))


def test_empty_mask_conventions() -> None:
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    both = mask_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (both["dice"], both["hd95"], both["sensitivity"], both["specificity"]) == (
        1.0, 0.0, 1.0, 1.0,
    )
    missed = mask_metrics(empty, full, (1.0, 1.0, 1.0))  # tumour not found
    assert missed["dice"] == 0.0 and missed["sensitivity"] == 0.0
    assert missed["hd95"] == pytest.approx(373.13, abs=0.01) == HD95_ONE_EMPTY_MM
    assert missed["specificity"] == 1.0
    spurious = mask_metrics(full, empty, (1.0, 1.0, 1.0))  # tumour where there is none
    assert spurious["dice"] == 0.0 and spurious["hd95"] == HD95_ONE_EMPTY_MM
    assert spurious["sensitivity"] == 0.0  # BraTS: 0 / (0 + eps)
    assert spurious["specificity"] == pytest.approx((216 - 8) / 216)
    assert hd95(empty, full, one_empty=374.0) == 374.0


def test_region_metrics_use_nested_regions_and_volumes() -> None:
    ref = np.zeros((12, 12, 12), dtype=np.uint8)
    ref[2:10, 2:10, 2:10] = 2  # oedema
    ref[4:8, 4:8, 4:8] = 1  # core
    ref[5:7, 5:7, 5:7] = 3  # enhancing
    pred = ref.copy()
    pred[pred == 3] = 1  # enhancing predicted as necrotic core: WT, TC right; ET empty
    out = region_metrics(pred, ref, (1.0, 1.0, 2.0))
    assert set(out) == {"WT", "TC", "ET"}
    assert out["WT"]["dice"] == 1.0 and out["TC"]["dice"] == 1.0
    assert out["WT"]["hd95"] == 0.0
    assert out["ET"]["dice"] == 0.0 and out["ET"]["hd95"] == HD95_ONE_EMPTY_MM
    assert out["WT"]["ref_volume_mm3"] == pytest.approx(8**3 * 2.0)
    assert out["ET"]["pred_volume_mm3"] == 0.0
    assert "lesion_dice" not in out["WT"]
    lw = region_metrics(pred, ref, (1.0, 1.0, 1.0), lesionwise=True)
    assert lw["WT"]["lesion_dice"] == 1.0 and lw["WT"]["lesion_tp"] == 1


def test_bad_inputs_are_refused() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="differ in shape"):
        dice(a, np.zeros((4, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a | True, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a | True, (1.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        hd95(a, a, percentile=120)
    with pytest.raises(ValueError, match="unexpected values"):
        region_metrics(np.full((4, 4, 4), 4), np.zeros((4, 4, 4), dtype=np.uint8))
