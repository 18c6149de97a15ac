"""Header values the DICOM fuzzer found crashing the reader: each is now a DicomError."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from transmed.bench.dicom_fuzz import _enhanced, _real_series
from transmed.io.dicom import DicomError, load_study, scan_folder


def _raw_set(path: Path, keyword: str, vr: str, value: bytes, within: str | None = None) -> None:
    """Write ``value`` raw under ``keyword`` with ``vr`` (pydicom's writer would refuse it)."""
    ds = pydicom.dcmread(path)
    target = ds[within][0] if within else ds
    tag = Tag(keyword)
    target[tag] = RawDataElement(tag, vr, len(value), value, 0, ds.is_implicit_VR,
                                 ds.is_little_endian)  # fmt: skip
    ds.save_as(path, enforce_file_format=False)


def _series(tmp: Path) -> Path:
    return _real_series(tmp / "s", "MR_small.dcm")[1]


def _first_slice(tmp: Path) -> Path:  # the series is labelled from its first file
    return _real_series(tmp / "s", "MR_small.dcm")[0]


def _enhanced_file(tmp: Path) -> Path:
    return _enhanced(tmp / "e")


CASES = {
    # two BitsAllocated values: int(MultiValue) raised TypeError in the pixel-format check
    "multi_valued_bits_allocated": (_series, ("BitsAllocated", "US", b"\x10\x00\x10\x00")),
    # a functional-group sequence whose VR says US: its "item" was an int (TypeError)
    "sequence_decoded_as_numbers": (
        _enhanced_file,
        ("PixelMeasuresSequence", "US", b"\x01\x00", "SharedFunctionalGroupsSequence"),
    ),
    # two SeriesNumber values: int(MultiValue) when ranking and labelling the series
    "multi_valued_series_number": (_first_slice, ("SeriesNumber", "IS", b"1\\2 ")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_header_values_are_dicom_errors(case: str, tmp_path: Path) -> None:
    make, args = CASES[case]
    path = make(tmp_path)
    _raw_set(path, *args)
    folder = path.parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the value itself
        scan = scan_folder(folder)
        (uid,) = scan.series
        with pytest.raises(DicomError, match="malformed or undecodable header value"):
            scan.build(uid).volume()
        try:  # the study load refuses it, or leaves the series out (no modality required)
            study = load_study(folder, modalities=())
        except DicomError as exc:
            assert "malformed or undecodable header value" in str(exc)
        else:
            assert study.series == {}
