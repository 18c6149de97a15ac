"""Predictor: whole volume vs sliding window by memory, exact-grid fast path, ensembles."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from transmed.inference import predictor as predictor_mod
from transmed.inference.memory import padded_voxels, parse_budget
from transmed.inference.predictor import Predictor
from transmed.io.nifti import Volume
from transmed.models.checkpoint import CheckpointError


def _volumes(shape=(20, 22, 18), spacing=(1.0, 1.0, 1.0), seed=0) -> dict[str, Volume]:
    rng = np.random.default_rng(seed)
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])  # LAS: needs reorientation
    base = np.zeros(shape, np.float32)
    base[3:-3, 3:-3, 3:-3] = 100 + rng.normal(0, 5, tuple(s - 6 for s in shape))
    return {m: Volume(base * (i + 1), affine) for i, m in enumerate(("t1", "t1ce", "t2", "flair"))}


@pytest.mark.parametrize(
    "text,expected",
    [("6G", 6 * 2**30), ("512M", 512 * 2**20), ("2.5GiB", int(2.5 * 2**30)), ("auto", None),
     (None, None), (3, 3 * 2**30), ("100k", 100 * 2**10)],
)  # fmt: skip
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["-1G", "lots", "0", "nanG"])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError, match="memory budget"):
        parse_budget(text)


def test_padded_voxels():
    assert padded_voxels((17, 16, 1), 16) == 32 * 16 * 16


def test_window_follows_the_recorded_mode_never_free_memory(tiny_checkpoint, monkeypatch):
    """Issue 10: ``--mode auto`` used to pick whole volume or sliding window from half the free
    memory, so a busy and an idle machine gave different labels for one case and checkpoint."""
    from transmed.inference import memory

    image = np.random.default_rng(0).normal(size=(4, 40, 36, 34)).astype(np.float32)
    results = {}
    for free in (2**10, 2**42):  # a busy machine (1 KiB free) and an idle one (4 TiB)
        monkeypatch.setattr(memory, "available_bytes", lambda device="cpu", f=free: f)
        p = Predictor.from_path(tiny_checkpoint)
        assert p.resolved_mode == "sliding"  # what save_checkpoint records by default
        assert p.window_for(image.shape[1:]) == (32, 32, 32)
        results[free] = p.probabilities(image)
    np.testing.assert_array_equal(results[2**10], results[2**42])


def test_the_mode_is_a_recorded_property_of_the_checkpoint(tmp_path, tiny_checkpoint):
    from transmed.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt["inference_mode"] == "sliding"
    whole = save_checkpoint(tmp_path / "whole.pt", {**ckpt, "inference_mode": "whole"})
    p = Predictor.from_path(whole)
    assert (p.mode, p.resolved_mode) == ("auto", "whole")
    assert p.window_for((40, 40, 40)) is None
    result = p.predict_case(_volumes(), "c")
    assert result.mode == "whole" and result.window is None
    p.mode = "sliding"  # the user's explicit choice wins, and the result says so
    result = p.predict_case(_volumes(), "c")
    assert result.mode == "sliding" and result.window == (32, 32, 32)


def test_an_unknown_or_inconsistent_recorded_mode_is_refused_by_name(tmp_path, tiny_checkpoint):
    from transmed.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match="inference_mode 'fast'"):
        save_checkpoint(tmp_path / "x.pt", {**ckpt, "inference_mode": "fast"})
    bad = tmp_path / "bad.pt"
    torch.save({**ckpt, "inference_mode": "fast"}, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt: inference_mode 'fast'"):
        Predictor.from_path(bad)
    for fold, mode in ((0, "sliding"), (1, "whole")):
        (tmp_path / "cv" / f"fold_{fold}" / "checkpoints").mkdir(parents=True)
        path = tmp_path / "cv" / f"fold_{fold}" / "checkpoints" / "final.pt"
        save_checkpoint(path, {**ckpt, "inference_mode": mode})
    with pytest.raises(CheckpointError, match=r"different inference modes.*fold_1.*whole"):
        Predictor.from_path(tmp_path / "cv")


def test_whole_volume_over_an_explicit_memory_budget_is_refused_not_switched(tiny_checkpoint):
    p = Predictor.from_path(tiny_checkpoint, mode="whole", memory_budget=1024)
    with pytest.raises(ValueError, match="over the memory budget.*--mode sliding"):
        p.window_for((40, 40, 40))
    p.memory_budget = 2**40
    assert p.window_for((40, 40, 40)) is None
    assert p.whole_volume_bytes((40, 40, 40)) > p.whole_volume_bytes((20, 20, 20)) > 0


class _KnownMemoryModel(torch.nn.Module):
    """A stand-in network whose forward holds exactly ``BYTES`` bytes per input voxel."""

    BYTES = 1024
    in_channels = 4
    fixed_size = (32, 32, 32)  # calibrate on 32³: 32 MiB of working memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = torch.ones((self.BYTES // 4, *x.shape[2:]))  # float32, every page touched
        return x[:, :3] * work[:1]


_MEASURE_IN_A_FRESH_PROCESS = """
import torch
from transmed.inference.memory import measure_bytes_per_voxel
from transmed.inference.memory_probe import reset_peak_rss

class M(torch.nn.Module):
    in_channels = 4
    fixed_size = (32, 32, 32)

    def forward(self, x):
        work = torch.ones((1024 // 4, *x.shape[2:]))
        return x[:, :3] * work[:1]

print(measure_bytes_per_voxel(M()), reset_peak_rss())
"""


def test_measured_bytes_per_voxel_matches_a_known_working_set():
    """In a fresh process: in a long-lived test worker the allocator may already hold the
    forward's pages from earlier tests, and the RSS high-water mark then does not move."""
    import subprocess
    import sys

    from transmed.inference import memory

    out = subprocess.run([sys.executable, "-c", _MEASURE_IN_A_FRESH_PROCESS], check=True,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    per_voxel, can_reset = float(out[0]), out[1] == "True"
    assert _KnownMemoryModel.BYTES == 1024  # the stand-in above documents the same model
    if not can_reset:  # no /proc/self/clear_refs: the documented conservative answer
        assert per_voxel == memory.FALLBACK_BYTES_PER_VOXEL
        return
    # the forward's 1024 B/voxel buffer (less a few pages the allocator already held), plus its
    # few float32 outputs; not the weights, the input or anything allocated before
    # (a fresh process also pays some first-use allocations of torch: measured 1192 B/voxel)
    assert 0.95 * _KnownMemoryModel.BYTES <= per_voxel < _KnownMemoryModel.BYTES + 256


def test_bad_predictor_arguments(tiny_checkpoint):
    with pytest.raises(ValueError, match="mode"):
        Predictor.from_path(tiny_checkpoint, mode="fast")
    with pytest.raises(ValueError, match="overlap"):
        Predictor.from_path(tiny_checkpoint, overlap=1.0)
    with pytest.raises(ValueError, match="roi_size"):
        Predictor.from_path(tiny_checkpoint, roi_size=(32, 32))


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (1.0, 1.0, 1.0)])
def test_exact_grid_fast_path_equals_probability_inversion(
    tmp_path, spacing, monkeypatch, checkpoint_factory
):
    """2 mm input on a 2 mm network grid is exact (fast path); 1 mm input is resampled."""
    ckpt = checkpoint_factory(tmp_path / "t.pt")
    p = Predictor.from_path(ckpt)
    prepared = p.prepare(_volumes(spacing=spacing), "c")
    probs = p._probabilities(prepared.image, None)
    fast = p.restore(probs, prepared.record, keep_probabilities=True)
    monkeypatch.setattr(predictor_mod, "is_exact_grid", lambda record: False)
    slow = p.restore(probs, prepared.record, keep_probabilities=True)
    np.testing.assert_array_equal(fast.labels, slow.labels)
    np.testing.assert_allclose(fast.probabilities, slow.probabilities)
    assert fast.labels.shape == (20, 22, 18) == fast.probabilities.shape[1:]
    np.testing.assert_allclose(fast.affine, np.diag([-spacing[0], spacing[1], spacing[2], 1.0]))


def test_predict_case_labels_live_on_the_reference_grid(tiny_checkpoint):
    p = Predictor.from_path(tiny_checkpoint)
    result = p.predict_case(_volumes(), "c", keep_probabilities=True)
    assert result.labels.dtype == np.uint8 and set(np.unique(result.labels)) <= {0, 1, 2, 3}
    assert result.probabilities.shape == (3, 20, 22, 18)
    assert set(result.seconds) == {"preprocess", "infer", "restore"}
    labels, affine = p.predict_volumes(_volumes(), "c")
    np.testing.assert_array_equal(labels, result.labels)


def test_cross_validation_folder_is_an_ensemble_of_its_folds(tmp_path, checkpoint_factory):
    for fold in (0, 1):
        (tmp_path / "cv" / f"fold_{fold}" / "checkpoints").mkdir(parents=True)
        torch.manual_seed(fold)
        checkpoint_factory(tmp_path / "cv" / f"fold_{fold}" / "checkpoints" / "final.pt")
    ens = Predictor.from_path(tmp_path / "cv")
    assert len(ens.models) == 2
    image = np.random.default_rng(0).normal(size=(4, 16, 16, 16)).astype(np.float32)
    singles = [
        Predictor.from_path(tmp_path / "cv" / f"fold_{f}").probabilities(image) for f in (0, 1)
    ]
    np.testing.assert_allclose(ens.probabilities(image), (singles[0] + singles[1]) / 2, atol=1e-6)


def test_checkpoint_with_other_input_channels_is_refused_by_name(tmp_path):
    from transmed.models import create_model
    from transmed.models.checkpoint import save_checkpoint

    model = create_model("unet", in_channels=3, features=(8, 16, 32, 64))
    path = save_checkpoint(tmp_path / "three.pt", {"model": model.state_dict(),
                                                   "model_config": model.config})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"three\.pt.*3 input channels"):
        Predictor.from_path(path)


def test_missing_checkpoint_folder(tmp_path):
    shutil.rmtree(tmp_path, ignore_errors=True)
    with pytest.raises(CheckpointError):
        Predictor.from_path(Path(tmp_path) / "nothing")


class _Everywhere(torch.nn.Module):
    """'Tumour' everywhere, inside the brain or not (logit +10 on every channel)."""

    in_channels, out_channels = 4, 3

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 3, *x.shape[2:]).clone()


def test_no_tumour_outside_the_mask_preprocessing_used() -> None:
    vols = _volumes()
    p = Predictor([_Everywhere()], roi_size=(16, 16, 16), model_mode="sliding")
    prepared = p.prepare(vols, "c")
    assert prepared.mask is not None and prepared.mask.any() and not prepared.mask.all()
    inside = vols["t1ce"].data != 0  # the volume's non-zero block is its foreground
    labels = p.predict_prepared(prepared).labels
    assert labels[inside].min() == 3 and labels[~inside].max() == 0
    p.inside_mask = False  # the raw network output: tumour in the zeros too
    assert p.predict_prepared(prepared).labels[~inside].min() == 3


def test_two_pass_bias_correction_runs_the_network_twice_and_records_it(tiny_checkpoint,
                                                                         monkeypatch):  # fmt: skip
    """``bias_correction="n4_two_pass"``: preprocessing unchanged, then the network on the
    image, N4 fitted without the first pass's tumour, the network again on the new image."""
    import dataclasses

    from transmed.transforms import bias_field

    p = Predictor.from_path(tiny_checkpoint)
    p.preprocess = dataclasses.replace(p.preprocess, bias_correction="n4_two_pass")
    seen, calls = [], []
    real = bias_field.renormalise_without

    def spy(image, mask, mean, std, exclude, spacing):
        calls.append((image.copy(), exclude.copy()))
        return real(image, mask, mean, std, exclude, spacing)

    monkeypatch.setattr(bias_field, "renormalise_without", spy)
    monkeypatch.setattr(p, "_probabilities", lambda img, w: seen.append(img.copy()) or
                        np.full((3, *img.shape[1:]), 0.2, np.float32))  # fmt: skip
    volumes = _volumes((40, 42, 38))
    result = p.predict_case(volumes, "c")
    assert len(seen) == 2 and len(calls) == 1
    np.testing.assert_array_equal(seen[0], calls[0][0])  # pass 1 sees the preprocessed image
    assert not calls[0][1].any()  # nothing found (p 0.2): nothing left out of the fit
    assert not np.array_equal(seen[0], seen[1])  # pass 2: the re-normalised image
    rec = result.record.extra["bias_correction"]
    assert rec["mode"] == "n4_two_pass" and set(rec["field_range"]) == {"t1", "t1ce", "t2",
                                                                         "flair"}  # fmt: skip
    plain = Predictor.from_path(tiny_checkpoint)
    assert "bias_correction" not in plain.predict_case(volumes, "c").record.extra


def test_test_time_mirroring_is_a_recorded_recommendation_of_the_checkpoint(tmp_path,
                                                                            tiny_checkpoint):
    from transmed.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    assert Predictor.from_path(tiny_checkpoint).mirror == ()  # none recorded: none
    lr = save_checkpoint(tmp_path / "lr.pt", {**ckpt, "tta_axes": [0]})
    p = Predictor.from_path(lr)
    assert p.mirror == (0,)
    result = p.predict_case(_volumes(), "c", keep_probabilities=True)
    assert p.provenance(result, [])["inference"]["tta"] == [0]
    off = Predictor.from_path(lr, mirror=False)  # the caller's choice wins
    assert off.mirror is False
    assert off.provenance(off.predict_case(_volumes(), "c"), [])["inference"]["tta"] is False
    # the recommendation changes the probabilities (an untrained net is not symmetric)
    plain = off.predict_case(_volumes(), "c", keep_probabilities=True)
    assert np.abs(plain.probabilities - result.probabilities).max() > 1e-4
    for bad in ([3], "lr", [0, 0], [True]):
        path = save_checkpoint(tmp_path / "bad.pt", {**ckpt, "tta_axes": bad})
        with pytest.raises(CheckpointError, match=r"bad\.pt: tta_axes"):
            Predictor.from_path(path)
