"""N4 bias-field correction: one pass over the brain, and a fit that leaves a tumour out."""

from __future__ import annotations

import numpy as np
import pytest

from transmed.transforms.bias_field import n4_correct, renormalise_without


def _head(shape=(64, 60, 52), seed=0):
    """One tissue in a sphere under a smooth field (×0.61..1.65 along x), with a diffuse bright
    'oedema' (up to 1.6× the tissue, Gaussian profile, sigma 12 mm) on the bright side, 5 %
    noise; z-scored over the sphere. Returns the image, the sphere, the lesion's core (1.5
    sigma), the raw mean and std."""
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    mask = np.sqrt(sum((g / (n * 0.45)) ** 2 for g, n in zip(grids, shape, strict=True))) <= 1
    d2 = (grids[0] - 8) ** 2 + grids[1] ** 2 + grids[2] ** 2
    lesion = 1.0 + 0.6 * np.exp(-d2 / (2 * 8.0**2))
    field = np.exp(0.5 * np.linspace(-1, 1, shape[0]))[:, None, None]
    rng = np.random.default_rng(seed)
    raw = (100.0 * lesion + rng.normal(0, 5, shape)) * field * mask
    mean, std = float(raw[mask].mean()), float(raw[mask].std())
    z = np.where(mask, (raw - mean) / std, 0).astype(np.float32)
    return z, mask, (d2 <= (1.5 * 8.0) ** 2) & mask, mean, std


def _contrast(img, mask, blob):
    """Blob mean minus the mean of the tissue ring around it, in z units."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(blob, iterations=6) & ~blob & mask
    return float(img[blob].mean() - img[ring].mean())


def test_a_fit_without_the_tumour_keeps_its_contrast():
    """N4 over the whole brain takes part of a diffuse bright lesion for bias (seen on the real
    TCGA-FG-6692: WT 15.2 -> 8.5 ml); fitted without the lesion it keeps it."""
    from scipy import ndimage

    z, mask, blob, mean, std = _head()
    image = np.stack([z, np.zeros_like(z)])  # the second series is missing (std 0)
    outside = ndimage.binary_dilation(blob, iterations=3) & mask
    one, _ = renormalise_without(image, mask, [mean, 0.0], [std, 0.0], np.zeros_like(mask),
                                 (1.5, 1.5, 1.5))  # fmt: skip
    two, info = renormalise_without(image, mask, [mean, 0.0], [std, 0.0], outside, (1.5,) * 3)
    assert _contrast(two[0], mask, blob) > 1.5 * _contrast(one[0], mask, blob)
    assert _contrast(two[0], mask, blob) > _contrast(z, mask, blob)  # the field hid some of it
    assert not two[1].any() and not two[:, ~mask].any()
    assert abs(float(two[0][mask].mean())) < 1e-4 and abs(float(two[0][mask].std()) - 1) < 1e-3
    assert info["fit_ml_excluded"] == pytest.approx(outside.sum() * 1.5**3 / 1000, abs=0.1)
    assert set(info["field_range"]) == {0}


def test_renormalise_without_refuses_bad_input():
    z, mask, blob, mean, std = _head((24, 24, 24))
    image = z[None]
    with pytest.raises(ValueError, match="do not match"):
        renormalise_without(image, mask[:10], [mean], [std], blob[:10], (1, 1, 1))
    with pytest.raises(ValueError, match="one mean and one std"):
        renormalise_without(image, mask, [mean, 1.0], [std], blob, (1, 1, 1))
    with pytest.raises(ValueError, match="no voxel left"):
        renormalise_without(image, mask, [mean], [std], np.ones_like(mask), (1, 1, 1))


def test_n4_correct_recovers_a_known_field():
    z, mask, blob, mean, std = _head()
    raw = (z * std + mean) * mask
    tissue = mask & ~blob
    corrected, info = n4_correct(raw, tissue, (1.5, 1.5, 1.5))
    x = corrected[tissue]
    assert x.std() / x.mean() < 0.35 * (raw[tissue].std() / raw[tissue].mean())
    assert 2.0 < info["field_max"] / info["field_min"] < 3.2  # the true ratio is 2.7
