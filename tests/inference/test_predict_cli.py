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


def test_sliding_window_and_whole_volume_modes_both_run(dataset, tiny_checkpoint, tmp_path):
    root, _ = dataset("brats2023", 1)
    for mode in ("sliding", "whole"):
        result = predict("-m", tiny_checkpoint, "-i", root, "-o", tmp_path / mode, "--mode", mode,
                         "--overlap", "0.25", "--memory-budget", "2G", "-q")  # fmt: skip
        assert result.exit_code == 0, result.output


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
    from transmed.training.checkpoint import save_checkpoint

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
    from transmed.io.dicom_seg import read_seg

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
