"""DICOM SEG: labels -> SEG -> file -> masks on the source grid, references, codes, validity."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

import transmed
from transmed.data.labels import labels_to_regions
from transmed.io.dicom import load_study, scan_folder
from transmed.io.dicom.seg import build_seg, read_seg, write_seg

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def source(synth_study):
    """The synthetic study's t1ce series (classic single-frame, 32 × 32 × 24)."""
    return load_study(Path(synth_study.files["t1ce"][0]).parents[1]).series["t1ce"]


def _codes(item, sequence: str) -> tuple[str, str]:
    code = getattr(item, sequence)[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


@pytest.mark.parametrize("segments", ["regions", "labels"])
def test_round_trip_through_a_file(segments, synth_study, source, tmp_path) -> None:
    labels = synth_study.label.data
    assert {1, 2, 3} <= set(np.unique(labels))  # every class is present to be checked
    seg = build_seg(labels, source, segments=segments)
    path = write_seg(seg, tmp_path / "out" / "seg.dcm")
    assert [p.name for p in path.parent.iterdir()] == ["seg.dcm"]  # no temp file left
    masks = read_seg(path, source)
    if segments == "regions":
        expected = dict(zip(("WT", "TC", "ET"), labels_to_regions(labels), strict=True))
    else:
        expected = {"NCR": labels == 1, "ED": labels == 2, "ET": labels == 3}
    assert list(masks) == list(expected)
    for name, mask in expected.items():
        assert masks[name].shape == source.shape
        np.testing.assert_array_equal(masks[name], mask, err_msg=name)


def test_file_is_valid_part10(synth_study, source, tmp_path) -> None:
    path = write_seg(build_seg(synth_study.label.data, source), tmp_path / "seg.dcm")
    raw = path.read_bytes()
    assert raw[:128] == b"\x00" * 128 and raw[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == SEG_STORAGE and ds.SegmentationType == "BINARY"
    assert ds.Modality == "SEG" and ds.SeriesDescription == "TransMed segmentation"
    assert hd.seg.segread(path).number_of_segments == 3


def test_references_and_copied_attributes(synth_study, source) -> None:
    seg = build_seg(synth_study.label.data, source)
    src = pydicom.dcmread(synth_study.files["t1ce"][0])
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                "StudyID", "StudyDate", "AccessionNumber", "FrameOfReferenceUID"):  # fmt: skip
        assert seg[key].value == src[key].value, key
    assert seg.SeriesInstanceUID not in synth_study.series_uids.values()
    (ref,) = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == synth_study.series_uids["t1ce"]
    referenced = {str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence}
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in synth_study.files["t1ce"]}  # fmt: skip
    assert referenced == sops
    # each SEG frame sits exactly on its source slice, in the source's orientation
    k_of = {f.sop_instance_uid: k for k, f in enumerate(source.frames)}
    iop = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose([float(v) for v in iop.ImageOrientationPatient],
                               [float(v) for v in src.ImageOrientationPatient])  # fmt: skip
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position],
                                   source.frames[k_of[str(uid)]].position, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ("regions", {"WT": ("108369006", "SCT"), "TC": ("108369006", "SCT"),
                     "ET": ("C113842", "NCIt")}),
        ("labels", {"NCR": ("6574001", "SCT"), "ED": ("79654002", "SCT"),
                    "ET": ("C113842", "NCIt")}),
    ],
)  # fmt: skip
def test_coded_concepts_and_algorithm(segments, expected, synth_study, source) -> None:
    seg = build_seg(synth_study.label.data, source, segments=segments)
    found = {}
    for n, item in enumerate(seg.SegmentSequence, start=1):
        assert item.SegmentNumber == n and item.SegmentAlgorithmType == "AUTOMATIC"
        assert _codes(item, "SegmentedPropertyCategoryCodeSequence") == ("49755003", "SCT")
        found[str(item.SegmentLabel)] = _codes(item, "SegmentedPropertyTypeCodeSequence")
        (algorithm,) = item.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "TransMed"
        assert algorithm.AlgorithmVersion == transmed.__version__
        assert _codes(algorithm, "AlgorithmFamilyCodeSequence") == ("123110", "DCM")
        assert len(item.RecommendedDisplayCIELabValue) == 3
    assert found == expected


def test_empty_prediction_still_gives_a_valid_seg(source, tmp_path) -> None:
    seg = build_seg(np.zeros(source.shape, np.uint8), source)
    path = write_seg(seg, tmp_path / "empty.dcm")
    masks = read_seg(pydicom.dcmread(path), source)
    assert set(masks) == {"WT", "TC", "ET"} and not any(m.any() for m in masks.values())
    assert int(seg.NumberOfFrames) >= 1


def test_bad_labels_are_refused(source) -> None:
    with pytest.raises(ValueError, match="do not match"):
        build_seg(np.zeros((4, 4, 4), np.uint8), source)
    bad = np.zeros(source.shape, np.uint8)
    bad[0, 0, 0] = 4
    with pytest.raises(ValueError, match="unexpected values 4"):
        build_seg(bad, source)
    with pytest.raises(ValueError, match="segments must be one of"):
        build_seg(np.zeros(source.shape, np.uint8), source, segments="classes")


def test_sagittal_source_round_trip(tmp_path) -> None:
    from transmed.data.synth.dicom import write_dicom_study

    synth = write_dicom_study(tmp_path / "sag", shape=(32, 32, 24), orientation="sagittal")
    series = load_study(tmp_path / "sag").series["t1ce"]
    masks = read_seg(build_seg(synth.label.data, series), series)
    np.testing.assert_array_equal(masks["WT"], synth.label.data > 0)
    np.testing.assert_array_equal(masks["ET"], synth.label.data == 3)


def test_multiframe_source_round_trip(tmp_path, dcm) -> None:
    order = [3, 1, 0, 2, 4, 9, 8, 7, 6, 5]  # frames out of slice order
    dcm.make_enhanced_mr(tmp_path / "mf" / "e.dcm", order=order)
    scan = scan_folder(tmp_path / "mf")
    (uid,) = scan.series
    series = scan.build(uid)
    labels = np.zeros(series.shape, np.uint8)
    labels[10:30, 20:40, 2:7] = 2
    labels[15:25, 25:35, 3:6] = 1
    labels[18:22, 28:31, 4] = 3
    seg = build_seg(labels, series)
    path = write_seg(seg, tmp_path / "seg.dcm")
    masks = read_seg(path, series)
    for name, mask in zip(("WT", "TC", "ET"), labels_to_regions(labels), strict=True):
        np.testing.assert_array_equal(masks[name], mask, err_msg=name)
    # every SEG frame references the source frame that shows its slice
    for frame in seg.PerFrameFunctionalGroupsSequence:
        src = frame.DerivationImageSequence[0].SourceImageSequence[0]
        k = order[int(src.ReferencedFrameNumber) - 1]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, series.frames[k].position, atol=1e-4)


def test_seg_of_another_series_is_refused(synth_study, source) -> None:
    other = load_study(Path(synth_study.files["t1"][0]).parents[1]).series["t2"]
    seg = build_seg(synth_study.label.data, source)
    with pytest.raises(ValueError, match="does not reference"):
        read_seg(seg, other)
