"""Data sets the DICOM fuzzer found crashing the node's C-STORE check: each is now refused."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from transmed.service.config import LimitsConfig
from transmed.service.validation import InstanceRefused, Status, parse_instance


def _mr_bytes(
    keyword: str | None = None, vr: str = "", value: bytes = b""
) -> tuple[bytes, str, str]:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    if keyword:
        tag = Tag(keyword)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, ds.is_implicit_VR,
                                 ds.is_little_endian)  # fmt: skip
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue(), str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _not_a_transfer_syntax() -> tuple[bytes, str, str]:
    raw, sop, uid = _mr_bytes()
    return raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.7\x00", 1), sop, uid


CASES = {
    # Rows declared FD with 2 bytes: pydicom's lazy decoding raised BytesLengthException
    "value_too_short_for_its_vr": (lambda: _mr_bytes("Rows", "FD", b"\x10\x00"),
                                   "not a decodable DICOM data set"),
    # an unknown VR: NotImplementedError on first access
    "unknown_vr": (lambda: _mr_bytes("Columns", "\x55\xc5", b"\x40\x00"),
                   "not a decodable DICOM data set"),
    # a file meta TransferSyntaxUID that is no transfer syntax: UID.is_compressed raised
    "not_a_transfer_syntax": (_not_a_transfer_syntax, "not a transfer syntax"),
    # PixelData declared US: len(int) raised TypeError
    "pixel_data_as_numbers": (lambda: _mr_bytes("PixelData", "US", b"\x01\x00"),
                              "PixelData is not a byte string"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_undecodable_values_are_refused_not_raised(case: str) -> None:
    make, message = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw, sop, uid = make()
        with pytest.raises(InstanceRefused, match=message) as info:
            parse_instance(raw, context_sop_class=sop, request_sop_instance=uid,
                           limits=LimitsConfig())  # fmt: skip
    assert info.value.status == Status.CANNOT_DECODE
