"""What the node accepts over C-STORE: one received data set in, a parsed dataset or a refusal out.

Each refusal carries the DICOM status the C-STORE response returns (PS3.4 B.2.3: 0xA7xx
refused, out of resources; 0xA9xx data set does not match SOP class; 0xCxxx cannot
understand) and a reason for the log that never contains a value from the data set.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from transmed.service.config import LimitsConfig
from transmed.service.keys import UnsafeName, uid_key

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ACCEPTED_SOP_CLASSES = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)
DEFLATED = b"1.2.840.10008.1.2.1.99"


class Status:
    """C-STORE statuses the node returns (the low byte tells the refusals apart)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # storage directory at its cap, or cannot write
    INSTANCE_TOO_LARGE = 0xA701  # data set beyond max_instance_bytes
    VOXEL_CAP = 0xA702  # rows × columns × frames beyond max_voxels
    STUDY_CAP = 0xA703  # study beyond max_study_bytes / max_study_instances
    SOP_CLASS_MISMATCH = 0xA900  # not MR, or not the SOP class of the presentation context
    MISSING_ATTRIBUTE = 0xA901  # a UID or an image attribute is missing or malformed
    MISSING_PIXEL_DATA = 0xA902
    SHORT_PIXEL_DATA = 0xA903  # pixel data shorter than rows × columns × frames × bytes
    INSTANCE_UID_MISMATCH = 0xA904  # data set's SOP Instance UID ≠ the request's
    CANNOT_DECODE = 0xC000  # not a DICOM data set, truncated, undecodable element
    NESTING_TOO_DEEP = 0xC001  # sequences nested beyond max_sequence_depth
    UNSAFE_UID = 0xC002  # a UID that is not a DICOM UID (e.g. holds path characters)
    PROCESSING_FAILURE = 0x0110  # the node's own failure (logged with a traceback)


class InstanceRefused(Exception):
    """A received data set the node will not store; ``status`` goes back to the peer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _vr(tag: Any, elem: Any) -> str:
    vr = getattr(elem, "VR", None)
    if vr:
        return str(vr)
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))  # implicit VR: the dictionary's
    except KeyError:
        return "UN"


def _walk(ds: Any, depth: int, max_depth: int) -> None:
    """Check every element's length against the bytes received, and the sequence nesting.

    pydicom keeps a value that ends early (a truncated stream) without complaint, so each
    element's bytes are compared with its declared length. Only sequences are decoded here
    (to walk their items; depth is checked before descending, so a hostile nesting cannot
    exhaust the stack): decoding every value would cost ~3 ms per instance, and the values
    are checked by the reader later anyway.
    """
    from pydicom.dataelem import RawDataElement

    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement) and elem.value is not None:
            if elem.length != 0xFFFFFFFF and len(elem.value) < elem.length:
                raise InstanceRefused(
                    Status.CANNOT_DECODE,
                    f"truncated data set: element {tag} holds {len(elem.value)} of its "
                    f"{elem.length} bytes",
                )
        if _vr(tag, elem) != "SQ":
            continue
        if depth + 1 > max_depth:
            raise InstanceRefused(
                Status.NESTING_TOO_DEEP, f"sequences nested deeper than {max_depth} levels"
            )
        for item in ds[tag].value:
            _walk(item, depth + 1, max_depth)


def _int_attr(ds: Any, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InstanceRefused(
            Status.MISSING_ATTRIBUTE, f"{keyword} is missing or not a number"
        ) from None
    if number <= 0:
        raise InstanceRefused(Status.MISSING_ATTRIBUTE, f"{keyword} must be positive")
    return number


def _check_pixels(ds: Any, limits: LimitsConfig) -> None:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InstanceRefused(Status.MISSING_PIXEL_DATA, "no pixel data")
    rows, cols = _int_attr(ds, "Rows"), _int_attr(ds, "Columns")
    frames = _int_attr(ds, "NumberOfFrames", 1)
    samples = _int_attr(ds, "SamplesPerPixel", 1)
    voxels = rows * cols * frames
    if voxels > limits.max_voxels:
        raise InstanceRefused(
            Status.VOXEL_CAP,
            f"image of {rows}×{cols}×{frames} voxels exceeds max_voxels {limits.max_voxels}",
        )
    if "PixelData" not in ds:
        return  # float pixel data: its length is checked by the reader
    from pydicom.uid import UID

    bits = _int_attr(ds, "BitsAllocated")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    ts = UID(str(ts)) if ts is not None else None
    if ts is not None and not ts.is_transfer_syntax:  # .is_compressed would raise (fuzzer)
        raise InstanceRefused(Status.CANNOT_DECODE, "TransferSyntaxUID is not a transfer syntax")
    if ts is not None and ts.is_compressed:
        return  # encapsulated: the length is only known after decompression
    expected = (voxels * samples * bits + 7) // 8
    if not isinstance(ds.PixelData, (bytes, bytearray)):  # a broken VR decodes to numbers
        raise InstanceRefused(Status.CANNOT_DECODE, "PixelData is not a byte string")
    if len(ds.PixelData) < expected:
        raise InstanceRefused(
            Status.SHORT_PIXEL_DATA,
            f"pixel data has {len(ds.PixelData)} bytes, the header claims {expected}",
        )


#: The attributes the checks below read; decoded up front, where a decoding error is a refusal.
_CHECKED = ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Rows",
            "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "PixelData",
            "FloatPixelData", "DoubleFloatPixelData")  # fmt: skip


def _decode_checked(ds: Any) -> None:
    """Decode the values the checks read (pydicom decodes lazily, and a broken VR or length
    raises on first access: NotImplementedError, BytesLengthException ...; found by the
    fuzzer, ``transmed.bench.dicom_fuzz``)."""
    for keyword in _CHECKED:
        ds.get(keyword)
    if hasattr(ds, "file_meta"):
        ds.file_meta.get("TransferSyntaxUID")


def _file_meta_bytes(raw: bytes) -> bytes:
    """The file meta group's bytes (after the preamble), from its group length when present."""
    start = 132 if raw[128:132] == b"DICM" else 0
    end = start + 2048
    if raw[start : start + 4] == b"\x02\x00\x00\x00" and raw[start + 4 : start + 6] == b"UL":
        end = start + 12 + int.from_bytes(raw[start + 8 : start + 12], "little")
    return raw[start : min(end, start + 65536)]


def parse_instance(
    raw: bytes, *, context_sop_class: str, request_sop_instance: str | None, limits: LimitsConfig
) -> Any:
    """Decode and check one received data set (DICOM file bytes with file meta).

    Args:
        raw: the data set as received, with preamble and file meta (pynetdicom's
            ``event.encoded_dataset()``).
        context_sop_class: the SOP class of the presentation context it came on.
        request_sop_instance: the C-STORE request's Affected SOP Instance UID.
        limits: the configured caps.

    Returns:
        The decoded ``pydicom.Dataset`` (every element decoded once).

    Raises:
        InstanceRefused: with the status to answer and a value-free reason.
    """
    from pydicom import dcmread

    if len(raw) > limits.max_instance_bytes:
        raise InstanceRefused(
            Status.INSTANCE_TOO_LARGE,
            f"data set of {len(raw)} bytes exceeds max_instance_bytes {limits.max_instance_bytes}",
        )
    if DEFLATED in _file_meta_bytes(raw):
        # pydicom inflates the whole data set before anything can be checked: its size is
        # unbounded by max_instance_bytes (the listener does not negotiate it either)
        raise InstanceRefused(
            Status.CANNOT_DECODE,
            "Deflated Explicit VR Little Endian is not accepted (its inflated size is unbounded)",
        )
    try:
        ds = dcmread(BytesIO(raw))
        _walk(ds, 0, limits.max_sequence_depth)
        _decode_checked(ds)
    except InstanceRefused:
        raise
    except RecursionError:
        raise InstanceRefused(Status.NESTING_TOO_DEEP, "sequences nested too deeply") from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InstanceRefused(
            Status.CANNOT_DECODE, f"not a decodable DICOM data set ({type(exc).__name__})"
        ) from None
    sop_class = ds.get("SOPClassUID")
    if not sop_class:
        raise InstanceRefused(
            Status.CANNOT_DECODE, "no SOP Class UID: not a DICOM composite instance"
        )
    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise InstanceRefused(
            Status.SOP_CLASS_MISMATCH, "SOP Class UID is not MR Image Storage or Enhanced MR"
        )
    if sop_class != context_sop_class:
        raise InstanceRefused(
            Status.SOP_CLASS_MISMATCH, "SOP Class UID differs from the presentation context"
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            raise InstanceRefused(Status.MISSING_ATTRIBUTE, f"{keyword} is missing")
        try:
            uid_key(str(ds.get(keyword)), keyword)
        except UnsafeName as exc:
            raise InstanceRefused(Status.UNSAFE_UID, str(exc)) from None
    if request_sop_instance is not None and str(ds.SOPInstanceUID) != str(request_sop_instance):
        raise InstanceRefused(
            Status.INSTANCE_UID_MISMATCH, "SOP Instance UID differs from the C-STORE request"
        )
    _check_pixels(ds, limits)
    return ds
