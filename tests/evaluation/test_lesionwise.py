"""BraTS 2023 lesion-wise Dice/HD95 on constructed cases with known answers, and against a literal
transcription of the challenge's full-volume loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from transmed.evaluation.lesionwise import (
    LESION_MISS_HD95_MM,
    lesion_matches,
    lesionwise_metrics,
    merged_gt_lesions,
)
from transmed.evaluation.metrics import dice, hd95


def _case() -> tuple[np.ndarray, np.ndarray]:
    """2 GT lesions (64 voxels each) + 1 tiny GT lesion (27 voxels) + 1 FP prediction."""
    ref = np.zeros((40, 40, 40), dtype=bool)
    pred = np.zeros_like(ref)
    ref[4:8, 4:8, 4:8] = True  # lesion A, predicted exactly: Dice 1, HD95 0
    pred[4:8, 4:8, 4:8] = True
    ref[24:28, 24:28, 24:28] = True  # lesion B, half predicted: Dice 2/3, HD95 2 (see below)
    pred[24:28, 24:28, 24:26] = True
    ref[34:37, 4:7, 34:37] = True  # tiny lesion C (27 voxels ≤ 50 mm³): not counted
    pred[4:7, 30:33, 30:33] = True  # false positive far from every lesion
    return pred, ref


def test_two_lesions_one_false_positive_known_values() -> None:
    pred, ref = _case()
    # Lesion B by hand: the 4x4x2 slab is all surface; 28 of its 32 voxels lie on the cube's
    # surface, 4 are 1 mm away -> P95 = 1. Of the cube's 56 surface voxels 28 are in the slab,
    # 12 are 1 mm and 16 are 2 mm away -> P95 = 2. HD95 = max = 2.
    assert hd95(pred[20:32, 20:32, 20:32], ref[20:32, 20:32, 20:32]) == pytest.approx(2.0)
    out = lesionwise_metrics(pred, ref, (1.0, 1.0, 1.0), "WT")
    assert out["region"] == "WT"
    assert (out["tp"], out["fn"], out["fp"]) == (2, 0, 1)
    assert out["dice"] == pytest.approx((1.0 + 2.0 / 3.0 + 0.0) / 3.0)
    assert out["hd95"] == pytest.approx((0.0 + 2.0 + 374.0) / 3.0)


def test_volume_threshold_decides_whether_a_missed_lesion_counts() -> None:
    pred, ref = _case()
    # Threshold 0: the tiny missed lesion counts as a false negative (Dice 0, HD95 374).
    out = lesionwise_metrics(pred, ref, (1.0, 1.0, 1.0), min_volume_mm3=0.0)
    assert (out["tp"], out["fn"], out["fp"]) == (2, 1, 1)
    assert out["dice"] == pytest.approx((1.0 + 2.0 / 3.0) / 4.0)
    assert out["hd95"] == pytest.approx((2.0 + 374.0 + 374.0) / 4.0)
    # The threshold is a volume (voxel count x voxel volume, as the BraTS code): at 2 mm
    # isotropic the 27-voxel lesion is 216 mm³ > 50 mm³ and counts.
    big = lesionwise_metrics(pred, ref, (2.0, 2.0, 2.0))
    assert big["fn"] == 1 and big["tp"] == 2


def test_gt_lesions_merge_within_dilation_and_pred_components_merge_per_lesion() -> None:
    ref = np.zeros((30, 30, 30), dtype=bool)
    ref[5:10, 5:10, 5:10] = True
    ref[5:10, 5:10, 12:17] = True  # 2-voxel gap: merged by 3 dilations, separate without
    _, n3 = merged_gt_lesions(ref, 3)
    _, n0 = merged_gt_lesions(ref, 0)
    assert (n3, n0) == (1, 2)
    pred = np.zeros_like(ref)
    pred[5:10, 5:10, 5:9] = True  # two prediction components on the merged lesion
    pred[5:10, 5:10, 13:17] = True
    lesions, fps = lesion_matches(pred, ref, (1.0, 1.0, 1.0), dilation_iterations=3)
    assert len(lesions) == 1 and fps == []
    assert len(lesions[0].matched) == 2
    assert lesions[0].dice == pytest.approx(dice(pred, ref))  # union of both components
    out = lesionwise_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (out["tp"], out["fn"], out["fp"]) == (1, 0, 0)


def test_prediction_just_outside_a_lesion_matches_through_the_dilation() -> None:
    ref = np.zeros((30, 30, 30), dtype=bool)
    ref[10:15, 10:15, 10:15] = True
    pred = np.zeros_like(ref)
    pred[10:15, 10:15, 17:20] = True  # 2-voxel gap: inside the 3x dilated lesion
    out = lesionwise_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (out["tp"], out["fp"], out["dice"]) == (1, 0, 0.0)
    far = np.roll(pred, 3, axis=2)  # 5-voxel gap: a false positive and a missed lesion
    out = lesionwise_metrics(far, ref, (1.0, 1.0, 1.0))
    assert (out["tp"], out["fn"], out["fp"]) == (0, 1, 1)
    assert out["hd95"] == pytest.approx(LESION_MISS_HD95_MM)


def test_empty_cases() -> None:
    empty = np.zeros((10, 10, 10), dtype=bool)
    some = empty.copy()
    some[2:8, 2:8, 2:8] = True
    assert lesionwise_metrics(empty, empty)["dice"] == 1.0
    assert lesionwise_metrics(empty, empty)["hd95"] == 0.0
    fp_only = lesionwise_metrics(some, empty)
    assert (fp_only["dice"], fp_only["hd95"], fp_only["fp"]) == (0.0, 374.0, 1)
    missed = lesionwise_metrics(empty, some)
    assert (missed["dice"], missed["hd95"], missed["fn"]) == (0.0, 374.0, 1)


def _brats_literal(pred: np.ndarray, ref: np.ndarray, dil: int, thresh: float) -> tuple:
    """The BraTS 2023 ``get_lesion_wise_score`` loop, whole volumes and all (HD95 ours)."""
    cc26 = np.ones((3, 3, 3), dtype=bool)
    struct = ndimage.generate_binary_structure(3, 2)
    gt_cc, _ = ndimage.label(ref, cc26)
    pred_cc, _ = ndimage.label(pred, cc26)
    dil_cc, n_dil = ndimage.label(ndimage.binary_dilation(ref, struct, iterations=dil), cc26)
    combined = np.zeros_like(dil_cc)
    for comp in range(1, n_dil + 1):
        tmp = gt_cc * (dil_cc == comp)
        combined += np.where(tmp > 0, comp, 0)
    tp, pairs = [], []
    for comp in range(1, combined.max() + 1):
        gt_tmp = combined == comp
        near = ndimage.binary_dilation(gt_tmp, struct, iterations=dil)
        hits = np.unique(pred_cc * near)
        hits = hits[hits != 0]
        tp += hits.tolist()
        pred_tmp = np.isin(pred_cc, hits)
        pairs.append((gt_tmp.sum(), dice(pred_tmp, gt_tmp), hd95(pred_tmp, gt_tmp, one_empty=374)))
    fp = np.unique(pred_cc[np.isin(pred_cc, tp + [0], invert=True)])
    kept = [p for p in pairs if p[0] > thresh]
    denom = len(kept) + len(fp)
    if denom == 0:
        return 1.0, 0.0
    return (sum(p[1] for p in kept) / denom, (sum(p[2] for p in kept) + 374 * len(fp)) / denom)


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], level: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return noise > level * noise.std()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_literal_brats_loop_on_random_blobs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (40, 40, 32)
    ref = _blobs(rng, shape, 2.0)  # ~60 speckles that dilation merges into 4-6 lesions
    pred = _blobs(rng, shape, 2.2) | (np.roll(ref, 1, axis=0) & _blobs(rng, shape, -0.5))
    lesions, fps = lesion_matches(pred, ref, min_volume_mm3=10.0)
    # The draw exercises every branch: merging, lesions under the threshold, misses, FPs.
    assert len(lesions) >= 4 and len(fps) > 0
    assert any(not m.counted for m in lesions) and any(m.counted for m in lesions)
    assert any(len(m.matched) > 1 for m in lesions)
    expected = _brats_literal(pred, ref, 3, 10.0)
    out = lesionwise_metrics(pred, ref, (1.0, 1.0, 1.0), min_volume_mm3=10.0)
    assert out["dice"] == pytest.approx(expected[0])
    assert out["hd95"] == pytest.approx(expected[1])


def test_bad_arguments() -> None:
    m = np.zeros((5, 5, 5), dtype=bool)
    with pytest.raises(ValueError, match="challenge"):
        lesionwise_metrics(m, m, challenge="BraTS-XYZ")
    with pytest.raises(ValueError, match="dilation_iterations"):
        lesion_matches(m, m, dilation_iterations=-1)
    with pytest.raises(ValueError, match="3D"):
        lesion_matches(np.zeros((5, 5), bool), np.zeros((5, 5), bool))
