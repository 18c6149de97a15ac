"""DICOM in -> SEG out through the shared predictor (tiny untrained checkpoint: plumbing only)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from transmed.data.labels import labels_to_regions
from transmed.data.synth.dicom import write_dicom_study
from transmed.inference.dicom import labels_on_series_grid, predict_dicom_study
from transmed.inference.predictor import Predictor
from transmed.io.dicom import DicomError, is_valid_uid, load_study
from transmed.io.dicom.seg import read_seg
from transmed.io.nifti import load_volume

PATIENT_NAME = "Quixotic^Zebediah"
PATIENT_ID = "ZZ-4711-QQ"
SHAPE = (32, 32, 24)


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_path(tiny_checkpoint)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("dicom") / "study"
    synth = write_dicom_study(folder, shape=SHAPE, spacing=(1.5, 1.5, 2.0),
                              patient_id=PATIENT_ID, patient_name=PATIENT_NAME)  # fmt: skip
    return folder, synth


def test_seg_references_t1ce_and_matches_its_geometry(predictor, study_dir, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    folder, synth = study_dir
    result = predict_dicom_study(predictor, folder, tmp_path / "out", write_nifti=True)
    assert result.seg_path == tmp_path / "out" / f"{result.seg_sop_instance_uid}.dcm"
    assert is_valid_uid(result.seg_sop_instance_uid) and result.seg_path.is_file()
    assert result.study_uid == synth.study_uid
    assert result.reference_modality == "t1ce"
    assert result.reference_series_uid == synth.series_uids["t1ce"]
    assert result.series_uids == synth.series_uids
    assert set(result.timings) == {"load_s", "predict_s", "write_s"}
    assert all(v >= 0 for v in result.timings.values())

    seg = pydicom.dcmread(result.seg_path)
    assert seg.StudyInstanceUID == synth.study_uid
    assert seg.FrameOfReferenceUID == synth.frame_of_reference_uid
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [
        synth.series_uids["t1ce"]
    ]
    assert (seg.Rows, seg.Columns) == (SHAPE[1], SHAPE[0])
    source = load_study(folder).series["t1ce"]
    masks = read_seg(result.seg_path, source)
    assert set(masks) == {"WT", "TC", "ET"}
    # the NIfTI written beside it holds the same labels on the t1ce grid
    nifti = load_volume(result.nifti_path, dtype=np.uint8)
    np.testing.assert_allclose(nifti.affine, source.affine, atol=1e-4)
    for name, mask in zip(("WT", "TC", "ET"), labels_to_regions(nifti.data), strict=True):
        assert mask.shape == source.shape
        np.testing.assert_array_equal(masks[name], mask, err_msg=name)
    for secret in (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID):
        assert secret not in caplog.text


def test_loaded_study_and_label_segments(predictor, study_dir, tmp_path) -> None:
    folder, synth = study_dir
    study = load_study(folder)
    result = predict_dicom_study(predictor, study, tmp_path, segments="labels")
    masks = read_seg(result.seg_path, study.series["t1ce"])
    assert list(masks) == ["NCR", "ED", "ET"]
    stacked = np.stack(list(masks.values()))
    assert stacked.sum(axis=0).max() <= 1  # label segments are disjoint


def test_missing_modality_is_named(predictor, tmp_path) -> None:
    write_dicom_study(tmp_path / "s", shape=SHAPE, modalities=("t1", "t1ce", "flair"))
    with pytest.raises(DicomError, match="no series for modality t2"):
        predict_dicom_study(predictor, tmp_path / "s", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_labels_are_resampled_only_when_grids_differ(study_dir) -> None:
    folder, _ = study_dir
    series = load_study(folder).series["t1ce"]
    labels = np.zeros(series.shape, np.uint8)
    labels[4:10, 6:12, 3:8] = 2
    same = labels_on_series_grid(labels, series.affine, series)
    np.testing.assert_array_equal(same, labels)
    # the same labels on a grid twice as coarse (every 2nd voxel) come back nearest-neighbour
    coarse_affine = series.affine.copy()
    coarse_affine[:3, :3] *= 2.0
    coarse = labels[::2, ::2, ::2]
    back = labels_on_series_grid(coarse, coarse_affine, series)
    assert back.shape == series.shape
    np.testing.assert_array_equal(back[::2, ::2, ::2], coarse)
    assert back[5, 7, 4] == 2 and back[0, 0, 0] == 0
