"""``transmed predict``: every input kind, outputs on the input grid, batch failures, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from transmed.cli import app
from transmed.data.labels import get_convention

runner = CliRunner()

LABEL_VALUES = {  # every label value a layout's convention may write
    "brats2021": {0, 1, 2, 4},
    "brats2023": {0, 1, 2, 3},
    "msd": {0, 1, 2, 3},
    "nnunet": {0, 1, 2, 3},
}


def predict(*args: str | Path):
    return runner.invoke(app, ["predict", *map(str, args)])


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    img = nib.load(str(path))
    return img.shape, img.affine


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd", "nnunet"])
def test_batch_over_every_layout_writes_each_case_on_its_own_grid(
    dataset, tiny_checkpoint, tmp_path, layout
):
    root, ids = dataset(layout, 2)
    out = tmp_path / "pred"
    result = predict("-m", tiny_checkpoint, "-i", root, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["succeeded"] == 2 and summary["failed"] == 0
    for cid in ids:
        pred = out / f"{cid}.nii.gz"
        shape, affine = _grid(pred)
        assert shape == (12, 12, 12)
        np.testing.assert_allclose(affine[:3, :3], np.diag([1.2, 1.0, 2.0]), atol=1e-5)
        values = set(np.unique(np.asarray(nib.load(str(pred)).dataobj)).tolist())
        assert values <= LABEL_VALUES[layout]
    assert not _leftovers(out)
    assert get_convention(layout)  # the layout's convention exists


def test_nnunet_images_ts_folder_predicts_only_the_test_cases(dataset, tiny_checkpoint, tmp_path):
    root, ids = dataset("nnunet", 1, n_test=2)
    out = tmp_path / "pred"
    result = predict("-m", tiny_checkpoint, "-i", root / "imagesTs", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert written == sorted(f"{cid}.nii.gz" for cid in ids[1:])


def test_modality_files_to_one_output_file_with_probabilities(dataset, tiny_checkpoint, tmp_path):
    root, (cid,) = dataset("brats2021", 1)
    files = {m: root / cid / f"{cid}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")}
    out = tmp_path / "sub" / "mask.nii.gz"
    args = [a for m, f in files.items() for a in (f"--{m}", f)]
    result = predict("-m", tiny_checkpoint, *args, "-o", out, "--probabilities", "--tta", "-q")
    assert result.exit_code == 0, result.output
    assert _grid(out)[0] == (12, 12, 12)
    probs = nib.load(str(tmp_path / "sub" / "mask_probabilities.nii.gz"))
    assert probs.shape == (12, 12, 12, 3)
    values = probs.get_fdata()
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.std() > 0


def test_auto_mode_is_the_checkpoints_recorded_mode_and_whole_volume_differs(
    dataset, checkpoint_factory, tmp_path
):
    """An 8³ training patch on a 1 mm network grid of the 12³ cases: the window slides."""
    ckpt = checkpoint_factory(tmp_path / "p8.pt", patch=(8, 8, 8), target_spacing=(1.0,) * 3)
    root, (cid,) = dataset("brats2023", 1)
    probs, windows = {}, {}
    for mode in ("auto", "sliding", "whole"):
        out = tmp_path / mode
        result = predict("-m", ckpt, "-i", root, "-o", out, "--mode", mode, "--probabilities",
                         "-q")  # fmt: skip
        assert result.exit_code == 0, result.output
        probs[mode] = nib.load(str(out / f"{cid}_probabilities.nii.gz")).get_fdata()
        (case,) = json.loads((out / "predict_summary.json").read_text())["results"]
        windows[mode] = case["window"]
    assert windows == {"auto": [8, 8, 8], "sliding": [8, 8, 8], "whole": None}
    np.testing.assert_array_equal(probs["auto"], probs["sliding"])  # recorded: sliding
    assert np.abs(probs["whole"] - probs["sliding"]).max() > 0.01  # a different computation


def test_batch_goes_on_past_a_missing_modality_and_a_truncated_file(
    dataset, tiny_checkpoint, tmp_path
):
    root, ids = dataset("brats2021", 3)
    (root / ids[0] / f"{ids[0]}_flair.nii.gz").unlink()
    t2 = root / ids[1] / f"{ids[1]}_t2.nii.gz"
    t2.write_bytes(t2.read_bytes()[:200])  # truncated
    out = tmp_path / "pred"
    result = predict("-m", tiny_checkpoint, "-i", root, "-o", out)
    assert result.exit_code == 1
    assert "2 of 3 case(s) failed" in result.output
    assert f"{ids[0]}_flair.nii.gz" in result.output  # names the missing file
    assert f"{ids[1]}_t2.nii.gz" in result.output  # names the unreadable file
    assert (out / f"{ids[2]}.nii.gz").is_file()
    assert not (out / f"{ids[0]}.nii.gz").exists() and not (out / f"{ids[1]}.nii.gz").exists()
    summary = json.loads((out / "predict_summary.json").read_text())
    assert set(summary["failures"]) == {ids[0], ids[1]} and summary["succeeded"] == 1
    assert not _leftovers(out)


def test_a_4d_file_where_a_3d_modality_belongs_is_named(dataset, tiny_checkpoint, tmp_path):
    root, (cid,) = dataset("brats2021", 1)
    t1 = root / cid / f"{cid}_t1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 12, 2), np.float32), np.eye(4)), str(t1))
    result = predict("-m", tiny_checkpoint, "-i", root, "-o", tmp_path / "pred")
    assert result.exit_code == 1
    assert f"{cid}_t1.nii.gz" in result.output


def test_modalities_that_do_not_overlap_in_space_are_refused(dataset, tiny_checkpoint, tmp_path):
    root, (cid,) = dataset("brats2021", 1)
    flair = root / cid / f"{cid}_flair.nii.gz"
    img = nib.load(str(flair))
    far = img.affine.copy()
    far[:3, 3] += 500.0  # half a metre away: not the same head
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), far), str(flair))
    result = predict("-m", tiny_checkpoint, "-i", root, "-o", tmp_path / "pred")
    assert result.exit_code == 1
    assert "flair" in result.output and "overlap" in result.output


def test_checkpoint_problems_are_clear_errors(dataset, tmp_path):
    from transmed.models import create_model
    from transmed.models.checkpoint import save_checkpoint

    root, _ = dataset("brats2021", 1)
    model = create_model("unet", in_channels=2, features=(8, 16, 32, 64))
    state = {"model": model.state_dict(), "model_config": model.config}
    wrong = save_checkpoint(tmp_path / "two_channels.pt", state)
    result = predict("-m", wrong, "-i", root, "-o", tmp_path / "pred")
    assert result.exit_code == 2
    assert "two_channels.pt" in result.output and "2 input channels" in result.output
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    result = predict("-m", garbage, "-i", root, "-o", tmp_path / "pred")
    assert result.exit_code == 2 and "garbage.pt" in result.output
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize(
    "key,value,message",
    [("preprocess_config", {"reference": "t1ce", "skull_colour": "blue"},
      "unknown preprocess_config key(s) ['skull_colour']"),
     ("preprocess_config", {"reference": "t3"}, "preprocess_config: reference must be one of"),
     ("preprocess_config", {"target_spacing": "2mm"}, "preprocess_config.target_spacing"),
     ("preprocess_config", ["t1ce"], "preprocess_config: expected a mapping"),
     ("preprocess_config", {"bias_correction": "n3"},
      "preprocess_config: bias_correction must be one of"),
     ("train_config", {"patch_size": [0, 64]}, "train_config.patch_size"),
     ("train_config", {"patch_size": [4, 4, 4]}, "train_config.patch_size"),
     ("train_config", "fast", "train_config: expected a mapping")],
)  # fmt: skip
def test_bad_checkpoint_configuration_is_refused_naming_the_file(
    dataset, tmp_path, key, value, message
):
    import torch

    from transmed.models import create_model
    from transmed.models.checkpoint import save_checkpoint

    root, _ = dataset("brats2021", 1)
    model = create_model("unet", features=(8, 16, 32, 64))
    state = {"model": model.state_dict(), "model_config": model.config,
             "train_config": {"patch_size": [32, 32, 32]}, "preprocess_config": {}}  # fmt: skip
    state[key] = value
    bad = save_checkpoint(tmp_path / "odd_config.pt", state)
    assert torch.load(bad, weights_only=True)[key] == value
    result = predict("-m", bad, "-i", root, "-o", tmp_path / "pred")
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "odd_config.pt" in result.output and message in result.output, result.output
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize(
    "args,message",
    [([], "nothing to predict"), (["-i", "MISSING"], "does not exist"),
     (["--t1", "X"], "missing modality file"), (["--mode", "fast", "-i", "ROOT"], "--mode"),
     (["-i", "ROOT", "-o", "one.nii.gz"], "only allowed for one case")],
)  # fmt: skip
def test_bad_arguments(dataset, tiny_checkpoint, tmp_path, args, message):
    root, _ = dataset("brats2021", 2)
    x = tmp_path / "x.nii.gz"
    x.write_bytes(b"")
    args = [str(root) if a == "ROOT" else str(x) if a == "X" else
            str(tmp_path / "missing") if a == "MISSING" else a for a in args]  # fmt: skip
    if "-o" not in args:
        args += ["-o", str(tmp_path / "pred")]
    result = predict("-m", tiny_checkpoint, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_dicom_folder_in_dicom_seg_out(tiny_checkpoint, tmp_path):
    import pydicom

    from transmed.data.synth.dicom import write_dicom_study
    from transmed.io.dicom import load_study
    from transmed.io.dicom.seg import read_seg

    study = write_dicom_study(tmp_path / "study", shape=(32, 32, 20), patient_name="Doe^Jane")
    out = tmp_path / "pred"
    result = predict("-m", tiny_checkpoint, "-i", tmp_path / "study", "-o", out, "--nifti")
    assert result.exit_code == 0, result.output
    (seg_path,) = out.glob("*.dcm")
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == study.study_uid
    referenced = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == study.series_uids["t1ce"]
    source = load_study(tmp_path / "study").series["t1ce"]
    masks = read_seg(seg_path, source)
    assert all(m.shape == source.shape for m in masks.values())
    assert len(list(out.glob("*.nii.gz"))) == 1
    assert "Doe" not in result.output


def test_dicom_study_missing_a_modality_fails_clearly(tiny_checkpoint, tmp_path):
    from transmed.data.synth.dicom import write_dicom_study

    write_dicom_study(tmp_path / "study", shape=(32, 32, 20), modalities=("t1", "t1ce", "t2"))
    out = tmp_path / "pred"
    result = predict("-m", tiny_checkpoint, "-i", tmp_path / "study", "-o", out)
    assert result.exit_code == 1
    assert "flair" in result.output
    assert not list(out.glob("*.dcm"))


def test_modality_rules_file_is_used_for_dicom_input(tiny_checkpoint, tmp_path):
    """Rules that map nothing to T2 make the study fail naming t2; the defaults succeed."""
    from transmed.data.synth.dicom import write_dicom_study

    write_dicom_study(tmp_path / "study", shape=(32, 32, 20))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {modality: flair, match: ['flair']}\n"
        "  - {modality: t1ce, match: ['post|gd']}\n"
        "  - {modality: t1, match: ['t1']}\n"
    )
    out = tmp_path / "pred"
    result = predict("-m", tiny_checkpoint, "-i", tmp_path / "study", "-o", out,
                     "--modality-rules", rules)  # fmt: skip
    assert result.exit_code == 1 and "t2" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {modality: pd, match: ['x']}\n")
    result = predict("-m", tiny_checkpoint, "-i", tmp_path / "study", "-o", out,
                     "--modality-rules", bad)  # fmt: skip
    assert result.exit_code == 2 and "bad.yaml" in result.output


# --------------------------------------------------------------------------------------------
# outputs that would destroy inputs or references; output I/O faults (issue 15, items 1 and 6)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model is loaded: the output checks must come first."""
    from transmed.inference.predictor import Predictor

    def boom(*_a, **_k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(Predictor, "from_path", boom)


def _digests(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*.nii.gz"))}


def test_output_file_that_is_an_input_file_is_refused(dataset, tiny_checkpoint, no_model_load):
    root, (cid,) = dataset("brats2021", 1)
    files = {m: root / cid / f"{cid}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")}
    before = _digests(root)
    args = [a for m, f in files.items() for a in (f"--{m}", f)]
    result = predict("-m", tiny_checkpoint, *args, "-o", files["t1"])
    assert result.exit_code == 2, result.output
    assert f"{cid}_t1.nii.gz" in result.output and "--overwrite" in result.output
    assert _digests(root) == before


@pytest.mark.parametrize(
    "layout,source,target,why",
    [("nnunet", "imagesTr", "labelsTr", "reference label"),
     ("msd", ".", "labelsTr", "reference label"),
     ("brats2021", ".", "CASE", "reference label"),
     ("msd", ".", "imagesTr", "input")],
)  # fmt: skip
def test_output_folder_over_inputs_or_reference_labels_is_refused(
    dataset, tiny_checkpoint, no_model_load, layout, source, target, why
):
    root, ids = dataset(layout, 2)
    before = _digests(root)
    out = root / (ids[0] if target == "CASE" else target)
    result = predict("-m", tiny_checkpoint, "-i", root / source, "-o", out)
    assert result.exit_code == 2, result.output
    assert why in result.output and "--overwrite" in result.output
    assert _digests(root) == before
    assert not (out / "predict_summary.json").exists()


def test_overwrite_lets_the_output_replace_an_input(dataset, tiny_checkpoint):
    root, (cid,) = dataset("nnunet", 1)
    label = root / "labelsTr" / f"{cid}.nii.gz"
    before = label.read_bytes()
    result = predict("-m", tiny_checkpoint, "-i", root / "imagesTr", "-o", root / "labelsTr",
                     "--overwrite", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert label.read_bytes() != before


def _read_only(folder: Path, monkeypatch) -> None:
    """Make ``folder`` read-only; as root (who writes through modes) also refuse temp files."""
    import errno
    import os
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's own name)
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_output_folder_is_one_line_before_the_model_loads(
    dataset, tiny_checkpoint, tmp_path, monkeypatch, no_model_load
):
    root, _ = dataset("brats2021", 1)
    out = tmp_path / "ro"
    _read_only(out, monkeypatch)
    try:
        result = predict("-m", tiny_checkpoint, "-i", root, "-o", out / "pred")
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "not writable" in result.output and str(out) in result.output


def test_full_disk_while_writing_probabilities_fails_the_case_as_a_unit(
    dataset, tiny_checkpoint, tmp_path, monkeypatch
):
    import errno

    from transmed.inference import batch

    root, ids = dataset("brats2021", 2)
    real, calls = batch.save_probabilities, []

    def full_disk_once(probs, affine, path):
        calls.append(path)
        if len(calls) == 1:  # the first case's second file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(probs, affine, path)

    monkeypatch.setattr(batch, "save_probabilities", full_disk_once)
    out = tmp_path / "pred"
    result = predict("-m", tiny_checkpoint, "-i", root, "-o", out, "--probabilities")
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["failed"] == 1 and ids[0] in summary["failures"]
    assert not (out / f"{ids[0]}.nii.gz").exists()  # all of a case's files or none
    assert not (out / f"{ids[0]}_probabilities.nii.gz").exists()
    assert (out / f"{ids[1]}.nii.gz").is_file()
    assert (out / f"{ids[1]}_probabilities.nii.gz").is_file()
    assert not _leftovers(out)


def test_a_summary_that_cannot_be_written_is_one_line(
    dataset, tiny_checkpoint, tmp_path, monkeypatch
):
    import errno

    from transmed.transforms import store

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", "predict_summary.json")

    monkeypatch.setattr(store, "write_json", full)
    root, _ = dataset("brats2021", 1)
    result = predict("-m", tiny_checkpoint, "-i", root, "-o", tmp_path / "pred", "-q")
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "No space left on device" in result.output


def test_tta_options_and_the_checkpoints_recommended_mirroring(dataset, tiny_checkpoint, tmp_path):
    from transmed.models.checkpoint import load_checkpoint, save_checkpoint

    root, (cid,) = dataset("brats2021", 1)
    lr_ckpt = save_checkpoint(tmp_path / "lr.pt", {**load_checkpoint(tiny_checkpoint),
                                                   "tta_axes": [0]})  # fmt: skip

    def tta(ckpt, *opts):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        result = predict("-m", ckpt, "-i", root / cid, "-o", out, *opts, "-q")
        assert result.exit_code == 0, result.output
        (prov,) = out.glob("*.provenance.json")
        return json.loads(prov.read_text())["inference"]["tta"]

    assert tta(tiny_checkpoint) is False  # nothing recorded, nothing asked
    assert tta(tiny_checkpoint, "--tta") == [0, 1, 2]  # --tta alone: every axis
    assert tta(tiny_checkpoint, "--tta-axes", "lr") == [0]
    assert tta(lr_ckpt) == [0]  # the model's recommendation
    assert tta(lr_ckpt, "--tta") == [0]
    assert tta(lr_ckpt, "--tta-axes", "all") == [0, 1, 2]
    assert tta(lr_ckpt, "--no-tta") is False
    for bad in (["--tta-axes", "xy"], ["--no-tta", "--tta-axes", "lr"]):
        result = predict("-m", tiny_checkpoint, "-i", root / cid, "-o", tmp_path / "bad", *bad)
        assert result.exit_code != 0 and "--tta-axes" in result.output
