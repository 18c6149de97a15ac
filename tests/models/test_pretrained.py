"""The shipped generalist model: resolved by name, hash-checked, loadable, used by default."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import transmed.models.pretrained as pre
from transmed.cli import app
from transmed.models.checkpoint import CheckpointError, load_model_and_checkpoint

runner = CliRunner()


def test_shipped_model_verifies_and_loads() -> None:
    path = pre.pretrained_path("generalist")
    assert path.stat().st_size < 25e6
    model, ckpt = load_model_and_checkpoint(path)
    assert ckpt["model_config"]["name"] == "transmed_a"
    assert ckpt["pretrained"]["version"] == pre.PRETRAINED["generalist"].version
    assert ckpt["preprocess_config"]["missing_modalities"] == "zero"
    assert ckpt["inference_mode"] == "sliding"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 storage upcast
    with torch.no_grad():
        out = model(torch.zeros(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32) and torch.isfinite(out).all()
    assert pre.resolve_model(None) == path and pre.resolve_model("generalist") == path
    assert pre.resolve_model("runs/x.pt") == Path("runs/x.pt")


def test_shipped_model_records_the_clean_up_it_was_evaluated_with() -> None:
    """The model card's figures are for this post-processing (chosen on a decision set,
    confirmed on the held-out sets); predict, the DICOM node and the API apply it."""
    from transmed.inference.postprocess import PostprocessConfig
    from transmed.inference.predictor import Predictor

    pred = Predictor.from_path(pre.pretrained_path("generalist"))
    assert pred.postprocess == PostprocessConfig(min_component_mm3=250.0, et_min_mm3=0.0,
                                                 drop_coreless_wt=True, core_margin_mm=20.0)


def test_tampered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / pre.PRETRAINED["generalist"].file
    shutil.copy(pre.pretrained_path("generalist"), copy)
    with open(copy, "r+b") as fh:  # flip one byte in the middle
        fh.seek(copy.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setattr(pre, "HERE", tmp_path)
    with pytest.raises(CheckpointError, match="does not match.*reinstall") as err:
        pre.pretrained_path("generalist")
    assert str(copy) in str(err.value)
    copy.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        pre.pretrained_path("generalist")
    with pytest.raises(CheckpointError, match="unknown pretrained"):
        pre.pretrained_path("nope")


def test_models_cli_lists_pretrained() -> None:
    res = runner.invoke(app, ["models", "--pretrained"])
    assert res.exit_code == 0, res.output
    assert "generalist" in res.output and pre.PRETRAINED["generalist"].sha256 in res.output


def test_predict_without_model_uses_the_shipped_one(tmp_path: Path) -> None:
    """Loose files, T2 missing (modality dropout): the label map lands on the T1ce grid."""
    rng = np.random.default_rng(0)
    shape = (40, 44, 36)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    brain = ((zz - 20) / 17) ** 2 + ((yy - 22) / 19) ** 2 + ((xx - 18) / 15) ** 2 < 1
    lesion = (zz - 24) ** 2 + (yy - 20) ** 2 + (xx - 18) ** 2 < 36
    affine = np.diag([1.2, 1.2, 1.5, 1.0])
    files = {}
    for m, gain in (("t1", 0.8), ("t1ce", 1.6), ("flair", 1.5)):
        img = rng.normal(100, 5, shape) * (1 + (gain - 1) * lesion)
        img[~brain] = 0
        files[m] = tmp_path / f"x_{m}.nii.gz"
        nib.save(nib.Nifti1Image(img.astype(np.float32), affine), str(files[m]))
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", "--t1", str(files["t1"]), "--t1ce", str(files["t1ce"]),
                              "--flair", str(files["flair"]), "-o", str(out),
                              "--case-id", "x"])  # fmt: skip
    assert res.exit_code == 0, res.output
    seg = nib.load(str(out / "x.nii.gz"))
    assert seg.shape == shape and np.allclose(seg.affine, affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}


def test_export_keeps_what_inference_needs_and_drops_the_optimiser(tmp_path: Path) -> None:
    from transmed.io.hashing import file_sha256
    from transmed.models.checkpoint import load_checkpoint, save_untrained_checkpoint
    from transmed.models.pretrained.export import export_checkpoint

    src = save_untrained_checkpoint(tmp_path / "run.pt", "transmed_d", features=(8, 16, 16, 16))
    ckpt = load_checkpoint(src)
    ckpt.update({"optimizer": {"state": {}}, "dynamic_temperature": 1.0, "epoch": 3,
                 "data_profile": {"cases": "generated"}, "preprocess_config": {"x": 1}})
    torch.save(ckpt, src)
    digest = export_checkpoint(src, tmp_path / "ship.pt", name="g", version="9.9")
    assert digest == file_sha256(tmp_path / "ship.pt")
    model, out = load_model_and_checkpoint(tmp_path / "ship.pt")
    assert "optimizer" not in out
    assert out["data_profile"] == {"cases": "generated"} and out["pretrained"]["version"] == "9.9"
    assert all(v.dtype == torch.float16 for v in out["model"].values() if v.is_floating_point())
    taus = [m.temperature for m in model.modules() if hasattr(m, "set_temperature")]
    assert taus and all(t == 1.0 for t in taus)  # the trained τ survives the export
