"""What ``transmed view PATH`` lists, for each kind of PATH, and what it refuses."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from viewer_helpers import make_case, make_dicom_predict_output, make_predict_output

from transmed.viewer.sources import ViewerError, catalogue
from transmed.viewer.volumes import load


def test_case_folder(tmp_path) -> None:
    d, _ = make_case(tmp_path)
    cat = catalogue(d)
    assert cat.kind == "dataset" and [c.case_id for c in cat.cases] == ["Case_001"]
    case = cat.cases[0]
    assert set(case.images) == {"t1", "t1ce", "t2", "flair"}
    assert case.prediction == d / "Case_001.nii.gz"


def test_loose_files_with_a_prediction(tmp_path) -> None:
    d, _ = make_case(tmp_path, "P07", prediction_name="P07_pred.nii.gz")
    loose = tmp_path / "loose"
    loose.mkdir()
    for name, new in (("P07_t1", "a_t1"), ("P07_t1ce", "a_t1c"), ("P07_t2", "a_t2w"),
                      ("P07_flair", "a_flair"), ("P07_pred", "a_seg")):  # fmt: skip
        shutil.copy(d / f"{name}.nii.gz", loose / f"{new}.nii.gz")
    cat = catalogue(loose)
    assert cat.kind == "loose"
    (case,) = cat.cases
    assert case.images["t1ce"].name == "a_t1c.nii.gz" and case.prediction.name == "a_seg.nii.gz"
    assert load(case).convention.name == "brats2021"  # auto: the file holds label 4


def test_predict_output_lists_every_case_and_reads_provenance(tmp_path) -> None:
    data, pred = make_predict_output(tmp_path, 3)
    (pred / "BraTS2021_00001.provenance.json").write_text(json.dumps({"model": "generalist"}))
    cat = catalogue(pred)
    assert cat.kind == "predict" and len(cat.cases) == 3
    assert all(c.problem is None and c.images for c in cat.cases)
    assert cat.cases[1].provenance["model"] == "generalist"
    assert cat.cases[0].provenance["model"] == {"model": "runs/tiny", "device": "cpu"}
    assert data.resolve() in cat.read_roots


def test_predict_output_without_images_says_so(tmp_path) -> None:
    _, pred = make_predict_output(tmp_path, 1)
    summary = json.loads((pred / "predict_summary.json").read_text())
    del summary["input"]
    (pred / "predict_summary.json").write_text(json.dumps(summary))
    (case,) = catalogue(pred).cases
    assert "--images" in (case.problem or "")
    (case,) = catalogue(pred, images=tmp_path / "data").cases
    assert case.problem is None and case.images


def test_storage_of_the_node(tmp_path, synth_dicom) -> None:
    dc = make_dicom_predict_output(tmp_path, synth_dicom, storage=True)
    done = dc.root / "jobs" / "20260102T000000-0123456789ab-000000"
    done.mkdir()
    (done / "state.json").write_text(json.dumps({"state": "done"}))
    cat = catalogue(dc.root)
    assert cat.kind == "storage" and len(cat.cases) == 2
    ok, deleted = cat.cases
    assert ok.seg == dc.seg and ok.dicom_folder == dc.study_dir and ok.problem is None
    assert "deleted" in deleted.problem


def test_symlink_out_of_path_is_refused(tmp_path) -> None:
    d, _ = make_case(tmp_path / "inside")
    outside, _ = make_case(tmp_path / "outside", "Other")
    (d / "Case_001_t1.nii.gz").unlink()
    (d / "Case_001_t1.nii.gz").symlink_to(outside / "Other_t1.nii.gz")
    cat = catalogue(d)
    (case,) = cat.cases
    assert case.images == {} and "outside" in case.problem
    assert cat.problems and "refused" in cat.problems[0]
    with pytest.raises(ViewerError, match="outside"):
        load(case)


def test_nothing_to_view(tmp_path) -> None:
    with pytest.raises(ViewerError, match="not a folder"):
        catalogue(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewerError, match="no case"):
        catalogue(tmp_path / "empty")


def test_label_on_another_grid_is_refused(tmp_path) -> None:
    d, lab = make_case(tmp_path)
    nib.save(nib.Nifti1Image(lab[:, :, :-2], np.eye(4)), d / "Case_001.nii.gz")
    with pytest.raises(ViewerError, match="another grid"):
        load(catalogue(d).cases[0])


def test_corrupt_label_is_refused(tmp_path) -> None:
    d, _ = make_case(tmp_path)
    data = (d / "Case_001.nii.gz").read_bytes()
    (d / "Case_001.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ViewerError, match="Case_001.nii.gz"):
        load(catalogue(d).cases[0])


def test_label_values_outside_the_convention_are_refused(tmp_path) -> None:
    d, lab = make_case(tmp_path)
    lab[0, 0, 0] = 7
    from viewer_helpers import AFFINE

    nib.save(nib.Nifti1Image(lab, AFFINE), d / "Case_001.nii.gz")
    with pytest.raises(ViewerError, match="7"):
        load(catalogue(d).cases[0])
