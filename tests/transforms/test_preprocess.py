"""Reversible preprocessing: round trips, co-registration by affine, z-score, crop, record, TCGA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from transmed.io.nifti import Volume, load_volume
from transmed.transforms import spatial
from transmed.transforms.preprocess import (
    MODALITIES,
    PreprocessConfig,
    PreprocessRecord,
    invert_labels,
    invert_probabilities,
    preprocess_case,
)


def _affine(
    spacing: tuple[float, float, float], codes: str = "RAS", perm=(0, 1, 2), origin=(0, 0, 0)
):
    """Affine whose array axis k points along world axis perm[k], flipped for L/P/I."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for k, world in enumerate(perm):
        sign = -1.0 if codes[k] in "LPI" else 1.0
        affine[world, k] = sign * spacing[k]
    affine[:3, 3] = origin
    return affine


def _sphere(shape: tuple[int, ...], radius_frac: float = 0.35) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    r = np.sqrt(sum((g / (n * radius_frac)) ** 2 for g, n in zip(grids, shape, strict=True)))
    return r <= 1.0


def _images(shape, affine, seed: int = 0, mask=None) -> dict[str, Volume]:
    """Four modalities on one grid: noisy, differently scaled intensities inside a sphere."""
    rng = np.random.default_rng(seed)
    mask = _sphere(shape) if mask is None else mask
    out = {}
    for i, m in enumerate(MODALITIES):
        data = (rng.normal(100 + 50 * i, 10 + 5 * i, size=shape) * mask).astype(np.float32)
        out[m] = Volume(data=data, affine=affine.copy())
    return out


def _blocky_labels(shape, block: int, seed: int = 1) -> np.ndarray:
    """Labels constant on aligned ``block``³ cubes, inside the sphere's box."""
    rng = np.random.default_rng(seed)
    coarse_shape = tuple(n // block for n in shape)
    coarse = rng.integers(0, 4, size=coarse_shape).astype(np.uint8) * _sphere(coarse_shape, 0.3)
    return np.kron(coarse, np.ones((block,) * 3, dtype=np.uint8)).astype(np.uint8)


@pytest.mark.parametrize(
    "codes, perm, spacing",
    [
        ("RAS", (0, 1, 2), (1.0, 1.0, 1.0)),
        ("LAS", (0, 1, 2), (0.9, 0.9, 5.5)),
        ("PSL", (1, 2, 0), (1.0, 1.5, 2.0)),  # permuted axes
    ],
)
def test_round_trip_is_exact_without_resampling(codes, perm, spacing) -> None:
    shape = (20, 24, 16)
    affine = _affine(spacing, codes, perm, origin=(-10, 5, 3))
    labels = _blocky_labels(shape, 1)
    case = preprocess_case(_images(shape, affine), Volume(labels, affine), PreprocessConfig())
    # The network grid is RAS: its affine has a positive diagonal after orientation.
    assert np.all(np.diag(case.record.affine)[:3] > 0)
    assert case.image.dtype == np.float32 and case.image.shape[0] == 4
    assert case.label is not None and case.label.shape == case.image.shape[1:]
    back = invert_labels(case.label, case.record)
    assert back.shape == shape
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(case.record.original_affine, affine)


@pytest.mark.parametrize("interp", ["nearest", "linear"])
@pytest.mark.parametrize(
    "codes, spacing, target, block",
    [
        ("LAS", (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), 2),  # downsampling: blocky at 2 mm
        ("LPS", (0.9, 0.9, 5.5), (0.9, 0.9, 1.1), 1),  # upsampling thick slices: any labels
    ],
)
def test_round_trip_is_exact_for_labels_blocky_at_the_coarse_grid(
    codes, spacing, target, block, interp
) -> None:
    shape = (32, 32, 16)
    affine = _affine(spacing, codes, origin=(3, -7, 11))
    labels = _blocky_labels(shape, block)
    config = PreprocessConfig(target_spacing=target, label_interpolation=interp)
    case = preprocess_case(_images(shape, affine), Volume(labels, affine), config)
    np.testing.assert_allclose(case.record.spacing, target, atol=1e-6)
    np.testing.assert_array_equal(invert_labels(case.label, case.record), labels)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_round_trip_of_smooth_shapes_keeps_dice(interp) -> None:
    shape = (48, 44, 40)
    affine = _affine((1.0, 1.0, 1.0), "LAS", origin=(20, -30, 5))
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    r = np.sqrt((grids[0] / 1.2) ** 2 + grids[1] ** 2 + (grids[2] / 0.8) ** 2)
    labels = np.select([r < 7, r < 12, r < 17], [1, 3, 2], 0).astype(np.uint8)
    config = PreprocessConfig(target_spacing=(1.7, 1.3, 2.2), label_interpolation=interp)
    case = preprocess_case(_images(shape, affine), Volume(labels, affine), config)
    back = invert_labels(case.label, case.record)
    assert _dice(back > 0, labels > 0) >= 0.95
    for c in (1, 2, 3):  # 5 mm shells on a 2.2 mm grid lose more at their two surfaces
        assert _dice(back == c, labels == c) >= 0.85, c
    # Probabilities take the linear path back and stay close to the label indicators.
    probs = np.stack([(case.label == c).astype(np.float32) for c in range(4)])
    back_probs = invert_probabilities(probs, case.record, fill=(1, 0, 0, 0))
    assert back_probs.shape == (4, *shape)
    assert _dice(back_probs.argmax(0) > 0, labels > 0) >= 0.95


def test_modalities_on_different_grids_are_aligned_by_their_affines() -> None:
    """A point at one world position lands in the same network voxel in every modality."""
    point = np.array([4.0, -6.0, 2.0, 1.0])
    ref_affine = _affine((1.0, 1.0, 1.0), "RAS", origin=(-16, -16, -16))
    grids = {
        "t1": (ref_affine, (32, 32, 32)),
        "t1ce": (ref_affine, (32, 32, 32)),
        "t2": (_affine((2.0, 2.0, 2.0), "LAS", origin=(20, -22, -18)), (20, 20, 20)),
        "flair": (_affine((1.0, 1.0, 1.0), "SPL", (2, 1, 0), origin=(19, 13, -21)), (40, 36, 30)),
    }
    images = {}
    for name, (affine, shape) in grids.items():
        data = np.zeros(shape, dtype=np.float32)
        ijk = np.rint(np.linalg.inv(affine) @ point).astype(int)[:3]
        assert np.all((ijk >= 0) & (ijk < shape)), name  # inside this series' field of view
        np.testing.assert_allclose(affine @ [*ijk, 1], point)  # the point is a voxel centre
        data[tuple(ijk)] = 1000.0
        # Foreground: a world-space ball so that z-scoring has a mask around the point.
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        world = idx @ affine[:3, :3].T + affine[:3, 3]
        data[np.linalg.norm(world - point[:3], axis=-1) < 10] += 10.0
        images[name] = Volume(data=data, affine=affine)
    case = preprocess_case(images, None, PreprocessConfig(margin_mm=0))
    assert case.record.reference == "t1ce"
    for c, name in enumerate(MODALITIES):
        peak = np.unravel_index(np.argmax(case.image[c]), case.image.shape[1:])
        np.testing.assert_allclose(case.record.affine @ [*peak, 1], point, atol=1e-6, err_msg=name)


def test_zscore_over_the_mask_and_zero_background() -> None:
    shape = (30, 28, 26)
    affine = _affine((1.0, 1.0, 1.0))
    mask = _sphere(shape)
    case = preprocess_case(_images(shape, affine, mask=mask), None, PreprocessConfig(margin_mm=3))
    crop = tuple(slice(a, b) for a, b in case.record.crop_box)
    inside = mask[crop]
    for c in range(4):
        values = case.image[c][inside].astype(np.float64)
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-4
        assert np.all(case.image[c][~inside] == 0)
    # The raw means differ by modality (100, 150, ...): the record keeps them.
    assert np.allclose(case.record.intensity_mean, [100, 150, 200, 250], atol=2)


def test_crop_box_contains_the_foreground_with_its_margin() -> None:
    shape = (40, 40, 20)
    affine = _affine((1.0, 1.0, 2.0))
    mask = np.zeros(shape, dtype=bool)
    mask[10:25, 5:30, 4:9] = True
    case = preprocess_case(_images(shape, affine, mask=mask), None, PreprocessConfig(margin_mm=4))
    # 4 mm margin: 4 voxels in x/y, 2 slices in z; clipped at the array border.
    assert case.record.crop_box == ((6, 29), (1, 34), (2, 11))
    assert case.image.shape == (4, 23, 33, 9)
    assert case.record.foreground == "nonzero"


def test_record_survives_json() -> None:
    shape = (24, 20, 16)
    affine = _affine((1.0, 1.2, 2.0), "LPS", origin=(1, 2, 3))
    labels = _blocky_labels(shape, 2)
    config = PreprocessConfig(target_spacing=(1.5, 1.5, 1.5))
    case = preprocess_case(_images(shape, affine), Volume(labels, affine), config, case_id="c1")
    text = json.dumps(case.record.to_dict())
    record = PreprocessRecord.from_dict(json.loads(text))
    assert record.case_id == "c1" and record.crop_box == case.record.crop_box
    np.testing.assert_allclose(record.affine, case.record.affine)
    np.testing.assert_array_equal(
        invert_labels(case.label, record), invert_labels(case.label, case.record)
    )
    broken = json.loads(text)
    broken["crop_box"] = [[0, 999], [0, 1], [0, 1]]
    with pytest.raises(ValueError, match="crop_box"):
        PreprocessRecord.from_dict(broken)
    del broken["ornt"]
    with pytest.raises(ValueError, match="malformed"):
        PreprocessRecord.from_dict(broken)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_spacing": (0.0, 1.0, 1.0)},
        {"target_spacing": (-1.0, 1.0, 1.0)},
        {"target_spacing": (float("nan"), 1.0, 1.0)},
        {"target_spacing": (1.0, 1.0)},
        {"margin_mm": -1.0},
        {"reference": "t3"},
        {"foreground": "skull"},
        {"label_interpolation": "cubic"},
        {"coregistration": "deformable"},
        {"bias_correction": "n3"},
    ],
)
def test_bad_config_is_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(**kwargs)


def test_bad_inputs_are_refused() -> None:
    shape = (16, 16, 16)
    affine = np.eye(4)
    images = _images(shape, affine)
    with pytest.raises(ValueError, match="missing"):
        preprocess_case({k: v for k, v in images.items() if k != "t2"})
    bad = np.zeros(shape, dtype=np.uint8)
    bad[8, 8, 8] = 4  # BraTS's raw ET value: must be converted to the internal 3 first
    with pytest.raises(ValueError, match="0..3"):
        preprocess_case(images, Volume(bad, affine))
    zeros = {m: Volume(np.zeros(shape, np.float32), affine) for m in MODALITIES}
    with pytest.raises(ValueError, match="no foreground"):
        preprocess_case(zeros)
    case = preprocess_case(images)
    with pytest.raises(ValueError, match="shape"):
        invert_labels(np.zeros((3, 3, 3), np.uint8), case.record)


def test_finest_reference_picks_the_smallest_voxels() -> None:
    shape = (16, 16, 16)
    images = _images(shape, _affine((2.0, 2.0, 2.0)))
    images["flair"] = Volume(images["flair"].data, _affine((1.0, 1.0, 2.0)))
    case = preprocess_case(images, None, PreprocessConfig(reference="finest"))
    assert case.record.reference == "flair"


def test_rigid_coregistration_recovers_a_head_movement() -> None:
    from transmed.transforms.registration import rigid_register

    shape = (40, 40, 40)
    affine = _affine((2.0, 2.0, 2.0), origin=(-40, -40, -40))
    shift = np.array([5.0, -3.0, 4.0])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = idx * 2.0 - 40

    def head(x: np.ndarray) -> np.ndarray:  # an asymmetric smooth object, mm coordinates
        blobs = [((0, 0, 0), 18, 1.0), ((8, 6, -4), 6, 2.0), ((-10, 4, 8), 4, 1.5)]
        return sum(w * np.exp(-np.sum((x - c) ** 2, -1) / (2 * s**2)) for c, s, w in blobs)

    fixed = head(world).astype(np.float32)
    moving = head(world - shift).astype(np.float32)  # the head moved by +shift mm
    w = rigid_register(fixed, moving, affine)
    np.testing.assert_allclose(w[:3, 3], shift, atol=0.5)
    np.testing.assert_allclose(w[:3, :3], np.eye(3), atol=0.02)
    np.testing.assert_allclose(w, rigid_register(fixed, moving, affine), atol=1e-9)  # repeatable


def test_real_tcga_case_end_to_end(tcga_dir: Path) -> None:  # tests/conftest.py finds it
    files = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}
    images = {m: load_volume(tcga_dir / f"TCGA-FG-6692_{f}.nii.gz") for m, f in files.items()}
    assert len({v.shape3d for v in images.values()}) == 3  # three different grids
    case = preprocess_case(images, None, PreprocessConfig(target_spacing=(1.0, 1.0, 1.0)))
    record = case.record
    assert record.foreground == "otsu"  # skull present: head mask, not nonzero
    assert record.original_shape == (256, 224, 26)
    np.testing.assert_allclose(record.spacing, (1.0, 1.0, 1.0), atol=1e-6)
    # LAS in, RAS out; 26 slices of 5.5 mm become ~143 slices of 1 mm before the crop.
    assert record.resampled_shape == (230, 201, 143)
    assert case.image.dtype == np.float32 and case.image.shape[0] == 4
    assert all(s >= 100 for s in case.image.shape[1:])  # a head, not a speck
    assert np.all(np.diag(record.affine)[:3] > 0)
    back = invert_labels((case.image[1] > 1).astype(np.uint8), record)
    assert back.shape == (256, 224, 26) and back.any()
    assert (
        spatial.reorient_grid(
            spatial.Grid(record.original_shape, record.original_affine), record.ornt
        ).shape
        == record.ras_shape
    )


@pytest.mark.parametrize("outside", ["zero", "edge"])
@pytest.mark.parametrize(
    "perm,signs,shift",
    [((0, 1, 2), (1, 1, 1), (0, 0, 0)), ((2, 0, 1), (-1, 1, 1), (9, -3, 2)),
     ((1, 2, 0), (1, -1, -1), (-4, 12, 8)), ((0, 2, 1), (1, 1, -1), (3, 1, 20))],
)  # fmt: skip
def test_integer_resample_matches_affine_transform(perm, signs, shift, outside):
    """The indexing fast path gives exactly what ndimage.affine_transform gives."""
    from scipy import ndimage

    from transmed.transforms import spatial

    rng = np.random.default_rng(0)
    data = rng.normal(size=(11, 9, 13)).astype(np.float32)
    matrix = np.eye(4)
    matrix[:3, :3] = 0
    for k, (a, s) in enumerate(zip(perm, signs, strict=True)):
        matrix[a, k] = s
    matrix[:3, 3] = shift
    out_shape = (14, 12, 10)
    fast = spatial.resample_array(data, matrix, out_shape, order=1, outside=outside, fill=-7.0)
    src, off, mode = (np.pad(data, 1, mode="edge"), matrix[:3, 3] + 1, "constant") if (
        outside == "zero") else (data, matrix[:3, 3], "nearest")  # fmt: skip
    slow = ndimage.affine_transform(
        src, matrix[:3, :3], offset=off, output_shape=out_shape, order=0, mode=mode, cval=-7.0,
        prefilter=False,
    )  # fmt: skip
    assert fast.dtype == data.dtype
    np.testing.assert_array_equal(fast, slow)
    assert (fast == -7.0).any() == (outside == "zero" and (slow == -7.0).any())


def test_nonzero_mask_fills_holes_like_the_whole_volume_fill():
    from scipy import ndimage

    from transmed.transforms.foreground import nonzero_mask

    rng = np.random.default_rng(1)
    images = np.zeros((2, 30, 28, 26), np.float32)
    images[0, 5:20, 4:22, 6:25] = 1.0  # a box touching nothing
    images[1, 0:9, 10:28, 0:5] = 2.0  # a box touching three faces of the volume
    images[:, 9:13, 9:13, 9:13] = 0.0  # an enclosed hole
    images[0][rng.random((30, 28, 26)) < 0.05] = 0.0  # speckle holes
    expected = ndimage.binary_fill_holes(np.any(images != 0, axis=0))
    got = nonzero_mask(images)
    np.testing.assert_array_equal(got, expected)
    assert got[10, 10, 10] and not got[25, 2, 20]


def test_n4_bias_correction_flattens_a_smooth_field_before_the_zscore() -> None:
    """A sphere of one tissue under a strong smooth multiplicative field (×0.6 to ×1.6 along
    x): with ``bias_correction="n4"`` the z-scored image is flat again, and the provenance
    records the field N4 found; ``"off"`` leaves the gradient."""
    shape = (64, 60, 52)  # N4 fits on a 3× shrunk copy: big enough to hold a field
    affine = _affine((1.5, 1.5, 1.5))
    mask = _sphere(shape, 0.45)
    images = _images(shape, affine, mask=mask)
    x = np.linspace(-1.0, 1.0, shape[0])[:, None, None]
    field = np.exp(0.5 * x).astype(np.float32)  # smooth, 0.61..1.65
    rng = np.random.default_rng(3)
    for m in MODALITIES:  # one tissue, 5 % noise, times the field
        images[m] = Volume(((100.0 + rng.normal(0, 5, shape)) * field * mask).astype(np.float32),
                           affine)  # fmt: skip

    def gradient(case) -> float:  # mean of the left third minus mean of the right third
        crop = tuple(slice(a, b) for a, b in case.record.crop_box)
        inside, img = mask[crop], case.image[3]
        third = img.shape[0] // 3
        return float(img[:third][inside[:third]].mean() - img[-third:][inside[-third:]].mean())

    off = preprocess_case(images, None, PreprocessConfig(margin_mm=0))
    on = preprocess_case(images, None, PreprocessConfig(margin_mm=0, bias_correction="n4"))
    assert gradient(off) < -1.5  # left dark, right bright: z-scores far apart
    assert abs(gradient(on)) < 0.25 * abs(gradient(off)), (gradient(on), gradient(off))
    rec = on.record.extra["bias_correction"]
    assert rec["mode"] == "n4" and set(rec["field_range"]) == set(MODALITIES)
    assert rec["field_range"]["flair"]["field_max"] / rec["field_range"]["flair"]["field_min"] > 1.5
    assert "bias_correction" not in off.record.extra
    assert on.record.extra["seconds"]["bias_correction"] > 0


def test_n4_refuses_bad_input() -> None:
    from transmed.transforms.bias_field import n4_correct

    vol, mask = np.ones((8, 8, 8), np.float32), np.ones((8, 8, 8), bool)
    with pytest.raises(ValueError, match="same 3D shape"):
        n4_correct(vol, mask[:4], (1, 1, 1))
    with pytest.raises(ValueError, match="empty mask"):
        n4_correct(vol, np.zeros_like(mask), (1, 1, 1))
    bad = vol.copy()
    bad[2, 2, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        n4_correct(bad, mask, (1, 1, 1))
    with pytest.raises(ValueError, match="shrink"):
        n4_correct(vol, mask, (1, 1, 1), shrink=0)
    same, info = n4_correct(vol * 5, mask, (1, 1, 1))  # constant: nothing to correct
    assert np.array_equal(same, vol * 5) and info == {"field_min": 1.0, "field_max": 1.0}
