"""The clinical front end of preprocessing: brain extraction decisions, automatic rigid
co-registration with its residual, missing series, input warnings, and bad-input errors.

Tiny volumes; deepbet itself runs only in the TCGA test (one real series, skipped without it).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from transmed.data.labels import MODALITIES
from transmed.io.nifti import Volume, load_volume
from transmed.transforms import brain_extraction as bx
from transmed.transforms.foreground import SKULL_STRIPPED_BORDER_ZEROS, border_zero_fraction
from transmed.transforms.preprocess import (
    PreprocessConfig,
    data_profile,
    input_warnings,
    preprocess_case,
)
from transmed.transforms.registration import RegistrationError, coregister


def _head(shape: tuple[int, int, int], spacing: float, shift_mm=(0.0, 0.0, 0.0), skull=True):
    """A smooth asymmetric 'head' (mm coordinates centred in the grid), optionally shifted."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    x = (idx - (np.asarray(shape) - 1) / 2) * spacing - np.asarray(shift_mm)
    blobs = [((0, 0, 0), 16, 1.0), ((8, 6, -4), 5, 2.0), ((-9, 4, 7), 4, 1.5),
             ((0, -10, 2), 3, 1.0)]
    img = sum(w * np.exp(-np.sum((x - c) ** 2, -1) / (2 * s**2)) for c, s, w in blobs)
    img = 100 * img
    if skull:  # background noise everywhere: not skull-stripped
        img = img + np.random.default_rng(0).uniform(1, 3, shape)
    return img.astype(np.float32)


def _affine(spacing: float, shape) -> np.ndarray:
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing
    return a


SHAPE = (36, 36, 30)
SP = 3.0


def test_skull_stripped_input_skips_brain_extraction(monkeypatch) -> None:
    def boom(*a, **k):  # deepbet must not run on BraTS-like input
        raise AssertionError("brain extraction ran on skull-stripped input")

    monkeypatch.setattr(bx, "brain_mask", boom)
    img = _head(SHAPE, SP, skull=False)
    img[img < 5] = 0  # exact zeros around the brain, as in BraTS
    vols = {m: Volume(img.copy(), _affine(SP, SHAPE)) for m in MODALITIES}
    case = preprocess_case(vols, config=PreprocessConfig(brain_extraction="auto",
                                                         coregistration="auto"))
    be = case.record.extra["brain_extraction"]
    assert be["applied"] is False and be["reason"] == "input already skull-stripped"
    assert case.record.extra["coregistration"]["decision"] == "header"
    assert case.record.foreground == "nonzero"


def _fake_mask(monkeypatch, volume_ml=None, calls=None):
    """brain_mask replaced by a sphere of radius 25 mm around the grid centre (or a volume)."""

    def fake(data, affine, device="cpu"):
        if calls is not None:
            calls.append(np.asarray(data).shape)
        shape = np.asarray(data).shape
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        world = idx @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
        mask = np.linalg.norm(world, axis=-1) < 25
        ml = float(mask.sum()) * abs(np.linalg.det(np.asarray(affine)[:3, :3])) / 1000
        ml = volume_ml if volume_ml is not None else ml
        return bx.BrainMask(mask, ml, [ml], 0.01, "fake", bx.mask_problems(ml, [ml]))

    monkeypatch.setattr(bx, "brain_mask", fake)


def _zero_background_ball(shape, spacing: float, radius_mm: float) -> np.ndarray:
    """A textured ball with exact zeros all around it (a stripped brain, or a head whose
    background an export zeroed)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    r = np.linalg.norm((idx - (np.asarray(shape) - 1) / 2) * spacing, axis=-1)
    img = 50 + 20 * np.random.default_rng(1).random(shape)
    return np.where(r < radius_mm, img, 0).astype(np.float32)


def test_is_skull_stripped_needs_border_zeros_and_a_brain_sized_object() -> None:
    shape, sp = (40, 40, 40), 5.0  # 200 mm field of view
    brain = _zero_background_ball(shape, sp, 70)  # 1,437 ml: a stripped brain
    head = _zero_background_ball(shape, sp, 95)  # 3,591 ml: a head with a zeroed background
    a = (sp, sp, sp)
    assert bx.is_skull_stripped(brain, a)
    assert not bx.is_skull_stripped(head, a)
    # the border rule alone would call the head stripped: the size check decides
    assert border_zero_fraction(head) >= SKULL_STRIPPED_BORDER_ZEROS
    # a brain-sized object in a noisy (nonzero) background is not stripped either
    noise = np.random.default_rng(2).uniform(1, 3, shape).astype(np.float32)
    assert not bx.is_skull_stripped(brain + noise, a)
    # the threshold sits between the two: 2,500 ml
    edge = _zero_background_ball(shape, sp, 85)  # 2,572 ml nominal
    ml = np.count_nonzero(edge) * sp**3 / 1000
    assert bx.is_skull_stripped(edge, a) == (ml <= bx.MAX_SKULL_STRIPPED_ML)


def test_a_head_with_a_zeroed_background_is_brain_extracted(monkeypatch) -> None:
    calls: list = []
    _fake_mask(monkeypatch, volume_ml=1400.0, calls=calls)
    shape, sp = (40, 40, 40), 5.0
    head = _zero_background_ball(shape, sp, 95)
    vols = {m: Volume(head.copy(), _affine(sp, shape)) for m in MODALITIES}
    case = preprocess_case(vols, config=PreprocessConfig(brain_extraction="auto"))
    assert calls == [shape]  # deepbet (here the fake) ran on the reference series
    assert case.record.extra["skull_stripped_input"] is False
    assert case.record.extra["brain_extraction"]["applied"] is True
    assert case.record.foreground == "brain"
    # the same object at brain size is left alone
    calls.clear()
    brain = _zero_background_ball(shape, sp, 70)
    vols = {m: Volume(brain.copy(), _affine(sp, shape)) for m in MODALITIES}
    case = preprocess_case(vols, config=PreprocessConfig(brain_extraction="auto"))
    assert calls == [] and case.record.extra["brain_extraction"]["applied"] is False


def test_brain_mask_from_the_reference_is_carried_to_every_series(monkeypatch) -> None:
    calls: list = []
    _fake_mask(monkeypatch, volume_ml=1400.0, calls=calls)
    img = _head(SHAPE, SP)
    vols = {m: Volume(img * (i + 1), _affine(SP, SHAPE)) for i, m in enumerate(MODALITIES)}
    # T2 on another (finer, shifted-origin) grid: the mask must still cover it after resampling
    vols["t2"] = Volume(_head((54, 54, 45), 2.0), _affine(2.0, (54, 54, 45)))
    case = preprocess_case(vols, config=PreprocessConfig(brain_extraction="auto"))
    assert calls == [SHAPE]  # extraction ran once, on the reference (T1ce) series
    assert case.record.foreground == "brain"
    be = case.record.extra["brain_extraction"]
    assert be["applied"] and be["series"] == "t1ce" and be["volume_ml"] == 1400.0
    # background is 0 outside the brain in EVERY channel, and inside it has signal
    mask = np.any(case.image != 0, axis=0)
    for channel in case.image:
        assert np.all(channel[~mask] == 0)
        assert np.count_nonzero(channel) > 0.8 * mask.sum()
    # the crop is the sphere's box (50 mm + 2 * 5 mm margin at 3 mm), not the whole head
    assert max(case.image.shape[1:]) <= 22


def test_implausible_brain_mask_is_refused_naming_the_series_unless_forced(monkeypatch) -> None:
    _fake_mask(monkeypatch, volume_ml=300.0)
    img = _head(SHAPE, SP)
    vols = {m: Volume(img.copy(), _affine(SP, SHAPE), path=Path(f"P1_{m}.nii.gz"))
            for m in MODALITIES}  # fmt: skip
    with pytest.raises(bx.BrainMaskError, match=r"t1ce \(P1_t1ce.nii.gz\).*300 ml"):
        preprocess_case(vols, config=PreprocessConfig(brain_extraction="on"))
    case = preprocess_case(vols, config=PreprocessConfig(brain_extraction="on"), force=True)
    assert case.record.extra["forced"] is True
    assert any("300 ml" in w for w in case.record.extra["warnings"])


def test_mask_problems_flags_volume_and_components() -> None:
    assert bx.mask_problems(1500, [1500]) == []
    assert "outside" in bx.mask_problems(500, [500])[0]
    assert "2 separate large components" in bx.mask_problems(1500, [1000, 500])[0]
    assert bx.mask_problems(1500, [1490, 10]) == []  # a small speck is not a second brain


def test_automatic_rigid_registration_finds_a_shifted_series() -> None:
    shift = (6.0, -4.5, 3.0)  # mm: the head moved between two series, headers unchanged
    affine = _affine(SP, SHAPE)
    fixed = _head(SHAPE, SP)
    mask = fixed > 10
    moved = coregister(fixed, _head(SHAPE, SP, shift_mm=shift), affine, fixed_mask=mask)
    assert moved.method == "rigid"
    np.testing.assert_allclose(moved.matrix[:3, 3], shift, atol=0.75)
    assert moved.correction_mm > 4 and moved.residual_mm < 1.0
    assert moved.metric_after < moved.metric_before  # better mutual information
    same = coregister(fixed, _head(SHAPE, SP), affine, fixed_mask=mask)
    assert same.method == "header" and np.array_equal(same.matrix, np.eye(4))


def test_auto_coregistration_in_preprocessing_records_transform_and_residual() -> None:
    affine = _affine(SP, SHAPE)
    vols = {m: Volume(_head(SHAPE, SP), affine) for m in MODALITIES}
    vols["flair"] = Volume(_head(SHAPE, SP, shift_mm=(0.0, 7.0, 0.0)), affine)
    case = preprocess_case(vols, config=PreprocessConfig(coregistration="auto"))
    extra = case.record.extra
    assert extra["coregistration"]["registered"] == ["flair"]
    assert set(extra["coregistration"]["headers_kept"]) == {"t1", "t2"}
    reg = extra["registration"]["flair"]
    assert abs(reg["translation_mm"][1] - 7.0) < 0.75 and reg["residual_mm"] < 1.0
    # after registration the FLAIR channel lines up with the T1ce channel
    t1ce, flair = case.image[1], case.image[3]
    assert np.corrcoef(t1ce.ravel(), flair.ravel())[0, 1] > 0.98


def test_a_registration_that_matches_worse_than_the_headers_keeps_them(monkeypatch) -> None:
    """Seen on generated skull-on heads: from an exact start the optimiser wandered 10 mm off
    to a worse mutual information, the consistency check then refused the series, and the
    FLAIR was dropped. A move that matches worse is no evidence of motion: headers kept."""
    import SimpleITK as sitk

    from transmed.transforms import registration

    real = registration._method

    class Wandering:  # the optimiser as seen: ends 10 mm off whatever the start
        def __init__(self, reg):
            self.reg = reg

        def SetInitialTransform(self, transform, inPlace=False):  # noqa: N802, N803
            self.start = sitk.Euler3DTransform(transform)

        def Execute(self, fixed, moving):  # noqa: N802
            out = sitk.Euler3DTransform(self.start)
            shift = zip(out.GetTranslation(), (10.0, 0.0, 0.0), strict=True)
            out.SetTranslation([t + d for t, d in shift])
            return out

    def method(fixed_img, moving_img, mask_img, shrink, smooth, iterations):
        reg = real(fixed_img, moving_img, mask_img, shrink, smooth, iterations)
        return reg if iterations == 1 else Wandering(reg)  # iterations 1: the metric probe

    affine = _affine(SP, SHAPE)
    fixed = _head(SHAPE, SP)
    monkeypatch.setattr(registration, "_method", method)
    kept = coregister(fixed, _head(SHAPE, SP), affine, fixed_mask=fixed > 10, name="flair")
    assert kept.method == "header" and np.array_equal(kept.matrix, np.eye(4))
    assert "worse than the headers" in kept.reason
    # forced (another frame of reference) it still registers, and the residual check decides
    with pytest.raises(RegistrationError, match="flair"):
        coregister(fixed, _head(SHAPE, SP), affine, fixed_mask=fixed > 10, name="flair",
                   force=True)  # fmt: skip


def test_another_frame_of_reference_forces_registration() -> None:
    affine = _affine(SP, SHAPE)
    vols = {m: Volume(_head(SHAPE, SP), affine) for m in MODALITIES}
    info = {m: {"frame_of_reference_uid": "1.2.3"} for m in MODALITIES}
    info["t2"] = {"frame_of_reference_uid": "1.2.4"}
    case = preprocess_case(vols, config=PreprocessConfig(coregistration="auto"),
                           series_info=info)  # fmt: skip
    decision = case.record.extra["coregistration"]
    assert decision["other_frame_of_reference"] == ["t2"]
    assert decision["registered"] == ["t2"]  # registered although the images agree
    assert "FrameOfReferenceUID" in case.record.extra["registration"]["t2"]["reason"]


def test_a_series_that_cannot_be_registered_is_refused_by_name() -> None:
    affine = _affine(SP, SHAPE)
    noise = np.random.default_rng(1).uniform(0, 100, SHAPE).astype(np.float32)
    with pytest.raises(RegistrationError, match="P9_t2"):
        coregister(_head(SHAPE, SP), noise, affine, fixed_mask=_head(SHAPE, SP) > 10,
                   force=True, name="t2 (P9_t2.nii.gz)")  # fmt: skip


def test_missing_series_zero_channel_or_clear_error() -> None:
    img = _head(SHAPE, SP, skull=False)
    img[img < 5] = 0
    vols: dict = {m: Volume(img.copy(), _affine(SP, SHAPE)) for m in MODALITIES}
    del vols["t1"]
    with pytest.raises(ValueError, match=r"missing series: t1; this model needs all of"):
        preprocess_case(vols)
    case = preprocess_case(vols, config=PreprocessConfig(missing_modalities="zero"))
    assert case.record.extra["missing"] == ["t1"]
    assert np.all(case.image[0] == 0) and np.any(case.image[1] != 0)
    assert any("missing series t1" in w for w in case.record.extra["warnings"])
    no_t1ce = {m: v for m, v in vols.items() if m != "t1ce"}
    with pytest.raises(ValueError, match="missing series: t1, t1ce; this model accepts missing "
                       "series except t1ce"):  # fmt: skip
        preprocess_case(no_t1ce, config=PreprocessConfig(missing_modalities="zero"))


def test_input_warnings_for_ct_and_empty_inputs() -> None:
    ct = {"foreground_ml": 1500.0, "reference_min": -1024.0, "intensity_std": [1.0]}
    assert any("CT" in w for w in input_warnings(ct, brain=False))
    tiny = {"foreground_ml": 12.0, "reference_min": 0.0, "intensity_std": [0.0]}
    warnings = input_warnings(tiny, brain=True)
    assert any("12 ml" in w for w in warnings) and any("empty" in w for w in warnings)
    ok = {"foreground_ml": 1500.0, "reference_min": 0.0, "intensity_std": [1.0]}
    assert input_warnings(ok, brain=True) == []


def test_data_profile_of_training_records() -> None:
    img = _head(SHAPE, SP, skull=False)
    img[img < 5] = 0
    case = preprocess_case({m: Volume(img.copy(), _affine(SP, SHAPE)) for m in MODALITIES})
    profile = data_profile([case.record, case.record.to_dict()])
    assert profile["cases"] == 2 and profile["skull_stripped_fraction"] == 1.0
    assert profile["max_slice_mm"] == SP and len(profile["foreground_ml"]) == 2


@pytest.mark.slow
def test_deepbet_on_the_real_thick_slice_t1ce(tcga_dir: Path) -> None:
    volume = load_volume(tcga_dir / "TCGA-FG-6692_t1c.nii.gz")
    t0 = time.perf_counter()
    result = bx.brain_mask(volume.data, volume.affine)
    took = time.perf_counter() - t0
    assert result.mask.shape == (256, 224, 26)  # on the series' own 5.5 mm grid
    assert 1300 < result.volume_ml < 1800 and result.problems == []
    assert len([c for c in result.components_ml if c > 50]) == 1
    print(f"deepbet on TCGA-FG-6692 T1ce: {took:.1f} s, {result.volume_ml:.0f} ml")


def test_an_unregistrable_series_is_left_out_when_the_model_accepts_missing_ones() -> None:
    """Noise instead of a T2 on another frame of reference: a model trained with missing series
    predicts without it (zero channel, a warning naming it); one that needs all four refuses."""
    affine = _affine(SP, SHAPE)
    vols = {m: Volume(_head(SHAPE, SP), affine) for m in MODALITIES}
    vols["t2"] = Volume(np.random.default_rng(1).uniform(0, 100, SHAPE).astype(np.float32),
                        affine, path=Path("P9_t2.nii.gz"))  # fmt: skip
    info = {m: {"frame_of_reference_uid": "1.2.3"} for m in MODALITIES}
    info["t2"] = {"frame_of_reference_uid": "1.2.4"}  # forces the registration
    with pytest.raises(RegistrationError, match="P9_t2"):
        preprocess_case(vols, config=PreprocessConfig(coregistration="auto"), series_info=info)
    case = preprocess_case(vols, config=PreprocessConfig(coregistration="auto",
                                                         missing_modalities="zero"),
                           series_info=info)  # fmt: skip
    extra = case.record.extra
    assert "t2" in extra["missing"] and "P9_t2" in extra["coregistration"]["dropped"]["t2"]
    assert np.all(case.image[2] == 0) and np.any(case.image[1] != 0)
    assert any("P9_t2" in w and "left out" in w for w in extra["warnings"])
