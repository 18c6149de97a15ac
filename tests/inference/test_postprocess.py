"""Post-processing: hierarchical small-component removal keeps labels nested."""

from __future__ import annotations

import numpy as np
import pytest

from transmed.data.labels import labels_to_regions
from transmed.inference.postprocess import (
    PostprocessConfig,
    coreless_components,
    postprocess_labels,
    small_components,
)


def _case() -> np.ndarray:
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:15, 5:15, 5:15] = 2  # big oedema (1000 voxels)
    labels[8:12, 8:12, 8:12] = 1  # core inside (64)
    labels[9:11, 9:11, 9:11] = 3  # enhancing inside (8)
    labels[25, 25, 25] = 2  # a 1-voxel oedema speck far away
    labels[20:22, 20:22, 5] = 3  # a 4-voxel ET speck outside any other tumour
    labels[13, 13, 13] = 3  # an ET voxel inside the oedema, away from the core
    return labels


def test_specks_are_demoted_one_level_and_big_lesions_kept():
    out = postprocess_labels(_case(), (1.0, 1.0, 1.0), PostprocessConfig(min_component_mm3=6))
    assert out[25, 25, 25] == 0 and (out[20:22, 20:22, 5] == 0).all()  # WT specks gone
    assert out[13, 13, 13] == 2  # lone TC/ET voxel inside WT: becomes oedema
    assert (out[9:11, 9:11, 9:11] == 3).all()  # 8-voxel ET kept (≥ 6 mm³)
    assert (out[8:12, 8:12, 8:12] > 0).all() and out[6, 6, 6] == 2


def test_threshold_is_in_mm3_not_voxels():
    labels = _case()
    # 8 ET voxels of 0.5 mm³ = 4 mm³ < 6 mm³: demoted to necrosis; at 1 mm³ they stay
    small = postprocess_labels(labels, (0.5, 1.0, 1.0), PostprocessConfig(min_component_mm3=6))
    assert (small[9:11, 9:11, 9:11] == 1).all()
    big = postprocess_labels(labels, (2.0, 1.0, 1.0), PostprocessConfig(min_component_mm3=6))
    assert (big[9:11, 9:11, 9:11] == 3).all()


def test_result_is_nested_and_input_untouched():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=(20, 20, 20), p=[0.7, 0.1, 0.1, 0.1])
    before = labels.copy()
    out = postprocess_labels(labels, (1, 1, 1), PostprocessConfig(min_component_mm3=30))
    np.testing.assert_array_equal(labels, before)
    wt, tc, et = labels_to_regions(out)
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    assert out.sum() < labels.sum()  # something was cleaned


def test_et_volume_rule_and_disabled_config():
    labels = _case()
    out = postprocess_labels(labels, (1, 1, 1), PostprocessConfig(0, et_min_mm3=100))
    assert not (out == 3).any() and (out[9:11, 9:11, 9:11] == 1).all()
    off = postprocess_labels(labels, (1, 1, 1), PostprocessConfig(0, 0))
    np.testing.assert_array_equal(off, labels)


def test_small_components_uses_26_connectivity():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner-touching: one component of 2
    assert not small_components(mask, 2).any()
    assert small_components(mask, 3).sum() == 2


def _satellites() -> np.ndarray:
    labels = np.zeros((40, 30, 30), np.uint8)
    labels[5:15, 5:15, 5:15] = 2  # a tumour: oedema ...
    labels[8:12, 8:12, 8:12] = 1  # ... around a core
    labels[17:20, 8:12, 8:12] = 2  # oedema 3 voxels beyond the tumour's edge (core 6 away)
    labels[30:36, 20:26, 20:26] = 2  # a distant patch of "oedema" with no core
    return labels


def test_coreless_components_are_found_by_distance_to_the_core():
    labels = _satellites()
    touching = coreless_components(labels, (1, 1, 1), 0.0)
    assert touching[30:36, 20:26, 20:26].all() and touching[17:20, 8:12, 8:12].all()
    assert not touching[5:15, 5:15, 5:15].any()  # the component holding the core stays
    near = coreless_components(labels, (1, 1, 1), 8.0)  # 6 mm from the core: kept
    assert near[30:36, 20:26, 20:26].all() and not near[17:20, 8:12, 8:12].any()
    # the margin is in mm on the grid's spacing: at 2 mm along x the satellite is 12 mm away
    assert coreless_components(labels, (2, 1, 1), 8.0)[17:20, 8:12, 8:12].all()
    no_core = np.where(labels > 0, 2, 0).astype(np.uint8)  # no core anywhere: nothing dropped
    assert not coreless_components(no_core, (1, 1, 1), 0.0).any()


def test_drop_coreless_wt_in_postprocess_and_off_by_default():
    labels = _satellites()
    default = postprocess_labels(labels, (1, 1, 1), PostprocessConfig(0, 0))
    np.testing.assert_array_equal(default, labels)
    cfg = PostprocessConfig(0, 0, drop_coreless_wt=True, core_margin_mm=8.0)
    out = postprocess_labels(labels, (1, 1, 1), cfg)
    assert (out[30:36, 20:26, 20:26] == 0).all()
    np.testing.assert_array_equal(out[:25], labels[:25])  # the tumour and its near oedema
    # a core removed as a speck first no longer anchors its oedema
    speck = labels.copy()
    speck[8:12, 8:12, 8:12] = 2
    speck[10, 10, 10] = 1  # a 1-voxel core: demoted to oedema by the 6 mm³ threshold
    cleaned = postprocess_labels(speck, (1, 1, 1), PostprocessConfig(6, 0, True, 8.0))
    np.testing.assert_array_equal(cleaned, np.where(speck > 0, 2, 0))  # no core left: kept


@pytest.mark.parametrize("kwargs", [{"min_component_mm3": -1}, {"et_min_mm3": float("nan")},
                                    {"core_margin_mm": -2.0}, {"core_margin_mm": True},
                                    {"drop_coreless_wt": 1.0}, {"et_min_mean_prob": 1.0},
                                    {"et_min_mean_prob": -0.1}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        PostprocessConfig(**kwargs)


def test_unsure_et_components_become_necrosis_by_mean_probability():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:28, 2:28, 2:28] = 2  # oedema around both cores
    labels[4:10, 4:10, 4:10] = 3  # ET component A (216 voxels)
    labels[18:24, 18:24, 18:24] = 3  # ET component B
    prob = np.zeros(labels.shape, np.float32)
    prob[4:10, 4:10, 4:10] = 0.85  # A: sure nowhere but one voxel
    prob[4, 4, 4] = 1.0  # a peak of 1 does not save it: the mean is what counts
    prob[18:24, 18:24, 18:24] = 0.95  # B: sure
    cfg = PostprocessConfig(min_component_mm3=0, et_min_mean_prob=0.9)
    out = postprocess_labels(labels, (1, 1, 1), cfg, et_probability=prob)
    assert (out[4:10, 4:10, 4:10] == 1).all()  # A: necrosis (still tumour core)
    assert (out[18:24, 18:24, 18:24] == 3).all()  # B kept
    assert (out[labels == 2] == 2).all()
    assert (labels[4:10, 4:10, 4:10] == 3).all()  # input untouched
    # A: 215 voxels at 0.85 and one at 1.0, mean 0.8507: kept by a cut at 0.85
    keep = postprocess_labels(labels, (1, 1, 1), PostprocessConfig(0, et_min_mean_prob=0.85),
                              et_probability=prob)  # fmt: skip
    assert (keep[4:10, 4:10, 4:10] == 3).all()
    # off by default, and a config that needs the probabilities refuses to run without them
    assert (postprocess_labels(labels, (1, 1, 1), PostprocessConfig(0)) == labels).all()
    with pytest.raises(ValueError, match="ET probabilities"):
        postprocess_labels(labels, (1, 1, 1), cfg)
    with pytest.raises(ValueError, match="ET probabilities"):
        postprocess_labels(labels, (1, 1, 1), cfg, et_probability=prob[:-1])


def test_bad_input():
    with pytest.raises(ValueError, match="3D"):
        postprocess_labels(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        postprocess_labels(np.zeros((4, 4, 4)), (1, 0, 1))


def test_the_checkpoint_recommends_its_clean_up_and_options_override_it(tmp_path) -> None:
    """The shipped model carries the clean-up chosen on its validation data (nnU-Net stores
    its post-processing with the model): predict uses it unless told otherwise."""
    import torch

    from transmed.inference.postprocess import PostprocessConfig
    from transmed.inference.predictor import Predictor
    from transmed.models.checkpoint import CheckpointError, save_untrained_checkpoint

    tiny = {"features": [4, 8], "encoder_blocks": [1, 1], "decoder_blocks": [1],
            "patch_size": (16, 16, 16)}  # fmt: skip
    plain = save_untrained_checkpoint(tmp_path / "plain.pt", "unet", **tiny)
    assert Predictor.from_path(plain).postprocess is None  # nothing recorded: no clean-up
    ck = torch.load(plain, weights_only=True)
    ck["postprocess"] = {"min_component_mm3": 250.0, "et_min_mm3": 0.0}
    torch.save(ck, tmp_path / "rec.pt")
    pred = Predictor.from_path(tmp_path / "rec.pt")
    assert pred.postprocess == PostprocessConfig(250.0, 0.0)
    off = Predictor.from_path(tmp_path / "rec.pt", postprocess=None)  # the caller's choice wins
    assert off.postprocess is None
    ck["postprocess"] = {"min_component_mm3": 250.0, "drop_coreless_wt": True,
                         "core_margin_mm": 10.0}  # fmt: skip
    torch.save(ck, tmp_path / "rec2.pt")
    assert Predictor.from_path(tmp_path / "rec2.pt").postprocess == PostprocessConfig(
        250.0, 0.0, True, 10.0)
    for bad in ({"min_component_mm3": -1}, {"speckles": 3}, [250], {"drop_coreless_wt": 1}):
        ck["postprocess"] = bad
        torch.save(ck, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=r"bad\.pt: postprocess"):
            Predictor.from_path(tmp_path / "bad.pt")


def test_predict_cli_merges_options_with_the_recommendation(tmp_path, monkeypatch) -> None:
    import torch
    from typer.testing import CliRunner

    from transmed.cli import app
    from transmed.inference import predictor as predictor_module
    from transmed.models.checkpoint import save_untrained_checkpoint

    tiny = {"features": [4, 8], "encoder_blocks": [1, 1], "decoder_blocks": [1],
            "patch_size": (16, 16, 16)}  # fmt: skip
    path = save_untrained_checkpoint(tmp_path / "m.pt", "unet", **tiny)
    ck = torch.load(path, weights_only=True)
    ck["postprocess"] = {"min_component_mm3": 250.0, "et_min_mm3": 0.0}
    torch.save(ck, path)
    seen = []
    monkeypatch.setattr(predictor_module.Predictor, "prepare",
                        lambda self, *a, **k: seen.append(self.postprocess) or 1 / 0)  # fmt: skip
    import nibabel as nib

    img = tmp_path / "in"
    img.mkdir()
    for m in ("t1", "t1ce", "t2", "flair"):
        vol = nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4))
        nib.save(vol, img / f"c_{m}.nii.gz")
    files = [a for m in ("t1", "t1ce", "t2", "flair")
             for a in (f"--{m}", str(img / f"c_{m}.nii.gz"))]  # fmt: skip
    runner = CliRunner()
    runner.invoke(app, ["predict", "-m", str(path), *files, "-o", str(tmp_path / "o1")])
    runner.invoke(app, ["predict", "-m", str(path), *files, "-o", str(tmp_path / "o2"),
                        "--et-min-mm3", "500"])  # fmt: skip
    runner.invoke(app, ["predict", "-m", str(path), *files, "-o", str(tmp_path / "o3"),
                        "--coreless-wt", "drop", "--core-margin-mm", "12"])  # fmt: skip
    assert seen == [PostprocessConfig(250.0, 0.0), PostprocessConfig(250.0, 500.0),
                    PostprocessConfig(250.0, 0.0, True, 12.0)]  # fmt: skip
    bad = runner.invoke(app, ["predict", "-m", str(path), *files, "-o", str(tmp_path / "o4"),
                              "--coreless-wt", "maybe"])  # fmt: skip
    assert bad.exit_code != 0 and "keep or drop" in bad.output and len(seen) == 3
    # the ET-confidence step: from the option, and from the checkpoint when no option is given
    # (the CLI rebuilds the config field by field: a field it forgets is silently dropped)
    runner.invoke(app, ["predict", "-m", str(path), *files, "-o", str(tmp_path / "o5"),
                        "--et-min-mean-prob", "0.8"])  # fmt: skip
    ck["postprocess"] = {"min_component_mm3": 250.0, "et_min_mean_prob": 0.9}
    torch.save(ck, tmp_path / "m2.pt")
    runner.invoke(app, ["predict", "-m", str(tmp_path / "m2.pt"), *files, "-o",
                        str(tmp_path / "o6")])  # fmt: skip
    runner.invoke(app, ["predict", "-m", str(tmp_path / "m2.pt"), *files, "-o",
                        str(tmp_path / "o7"), "--et-min-mean-prob", "0"])  # fmt: skip
    assert seen[3:] == [PostprocessConfig(250.0, et_min_mean_prob=0.8),
                        PostprocessConfig(250.0, et_min_mean_prob=0.9), PostprocessConfig(250.0)]
