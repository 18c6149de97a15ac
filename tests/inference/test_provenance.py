"""Provenance beside every output: model hash, series, brain extraction, registration, mode,
warnings, timings; missing series through the CLI; warnings for inputs far from training."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from transmed.cli import app
from transmed.data.labels import MODALITIES
from transmed.inference.provenance import file_sha256, profile_warnings, provenance_path

runner = CliRunner()


def _write_case(folder: Path, skull: bool = False) -> dict[str, Path]:
    """Four 24³ series at 2 mm: a bright ball in a dimmer 'brain' (zeros outside unless skull)."""
    folder.mkdir(parents=True, exist_ok=True)
    idx = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"), -1) - 11.5
    r = np.linalg.norm(idx, axis=-1)
    files = {}
    for i, m in enumerate(MODALITIES):
        img = np.where(r < 10, 100.0 + 10 * i, 0.0) + np.where(r < 3, 80.0, 0.0)
        if skull:
            img = img + np.random.default_rng(i).uniform(1, 5, img.shape)
        path = folder / f"P1_{m}.nii.gz"
        nib.save(nib.Nifti1Image(img.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path)
        files[m] = path
    return files


def _predict(ckpt: Path, files: dict[str, Path], out: Path, *extra: str):
    args = ["predict", "-m", str(ckpt), "-o", str(out), "-q", *extra]
    for m, p in files.items():
        args += [f"--{m}", str(p)]
    return runner.invoke(app, args)


def test_provenance_path_beside_the_output() -> None:
    assert provenance_path("out/P1.nii.gz") == Path("out/P1.provenance.json")
    assert provenance_path("out/1.2.3.dcm") == Path("out/1.2.3.provenance.json")


def test_every_label_map_gets_its_provenance(checkpoint_factory, tmp_path) -> None:
    ckpt = checkpoint_factory(tmp_path / "m.pt")
    files = _write_case(tmp_path / "in")
    out = tmp_path / "pred"
    result = _predict(ckpt, files, out, "--all-grids", "--brain-extraction", "auto",
                      "--coregistration", "auto")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "P1.provenance.json").read_text())
    assert doc["model"][0]["sha256"] == file_sha256(ckpt)
    assert doc["model"][0]["name"] == "transmed_full"
    assert doc["series"]["t1ce"].endswith("P1_t1ce.nii.gz")
    assert doc["brain_extraction"]["applied"] is False  # zero background: skull-stripped
    assert doc["brain_extraction"]["reason"] == "input already skull-stripped"
    assert doc["coregistration"]["decision"] == "header"  # one grid, skull-stripped
    assert doc["preprocessing"]["brain_extraction"] == "auto"  # the CLI option won
    assert doc["inference"]["mode"] in ("whole", "sliding")
    assert {"preprocess", "infer", "restore"} <= set(doc["seconds"])
    assert doc["missing_series"] == [] and doc["forced"] is False
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["results"][0]["mode"] == doc["inference"]["mode"]
    for m in MODALITIES:  # --all-grids: the label map on every series' own grid too
        assert (out / f"P1_on_{m}.nii.gz").is_file()
        assert f"P1_on_{m}.nii.gz" in doc["outputs"]


def test_missing_series_needs_a_model_that_accepts_it(checkpoint_factory, tmp_path) -> None:
    files = _write_case(tmp_path / "in")
    del files["t2"]
    strict = checkpoint_factory(tmp_path / "strict.pt")
    result = _predict(strict, files, tmp_path / "a")
    assert result.exit_code != 0
    assert "missing series: t2" in result.output and "needs all of" in result.output
    assert not list((tmp_path / "a").glob("*.nii.gz"))
    lenient = checkpoint_factory(tmp_path / "lenient.pt", missing_modalities="zero")
    result = _predict(lenient, files, tmp_path / "b")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "b" / "P1.provenance.json").read_text())
    assert doc["missing_series"] == ["t2"]
    assert any("missing series t2" in w for w in doc["warnings"])
    no_t1ce = {m: p for m, p in files.items() if m != "t1ce"}
    result = _predict(lenient, no_t1ce, tmp_path / "c")
    assert result.exit_code != 0 and "t1ce" in result.output


def test_input_far_from_the_training_data_is_warned() -> None:
    training = {"skull_stripped_fraction": 1.0, "max_slice_mm": 1.0, "foreground_ml": [900, 1600]}
    profile = {"max_slice_mm": 5.5, "foreground_ml": 3500.0}
    warnings = profile_warnings(profile, training, {"skull_stripped_input": False})
    assert any("skull-stripped data only" in w for w in warnings)
    assert any("5.5 mm" in w for w in warnings)
    assert any("3500 ml" in w for w in warnings)
    same = {"max_slice_mm": 1.0, "foreground_ml": 1200.0}
    assert profile_warnings(same, training, {"skull_stripped_input": True}) == []
    assert profile_warnings(profile, None, {}) == []  # no profile in the checkpoint: no claim
