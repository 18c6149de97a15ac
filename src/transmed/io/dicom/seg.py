"""DICOM Segmentation (SEG) objects for TransMed label maps, written and read with highdicom.

:func:`build_seg` turns internal labels (0 background, 1 NCR, 2 ED, 3 ET) on a source series'
grid into a BINARY SEG that references that series frame by frame, one segment per BraTS
region (WT, TC, ET: nested, so the segments overlap) or per label (NCR, ED, ET: disjoint).
:func:`write_seg` stores it atomically as a DICOM Part 10 file; :func:`read_seg` reads one back
onto the source grid for verification.

Grids: labels are indexed ``[i, j, k]`` like :class:`transmed.io.dicom.DicomSeries` volumes
(i = column, j = row, k = slice along row × column); highdicom wants ``(frames, rows,
columns)`` in the order of the source images (single-frame series) or of the source frames
(multi-frame), so the arrays are transposed to ``(k, j, i)`` and, for a multi-frame source,
reordered from slice order to frame-number order.

Coded concepts (SNOMED CT = SCT, NCI Thesaurus = NCIt, DICOM = DCM; meanings as in DICOM PS3.16
CID 7150 / 7151 and pydicom's code dictionary):

- category of every segment: SCT 49755003 "Morphologically Abnormal Structure";
- WT and TC: SCT 108369006 "Neoplasm" (no code exists for the BraTS "tumour core" composite;
  the segment label and description say which region);
- ET: NCIt C113842 "Enhancing Lesion";
- NCR (label 1, necrotic / non-enhancing core): SCT 6574001 "Necrosis";
- ED (label 2): SCT 79654002 "Edema";
- algorithm family: DCM 123110 "Artificial Intelligence", algorithm type AUTOMATIC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from transmed.data.labels import labels_to_regions
from transmed.io.atomic import atomic_write
from transmed.io.dicom import DicomError, DicomSeries

_CATEGORY = Code("49755003", "SCT", "Morphologically Abnormal Structure")
_NEOPLASM = Code("108369006", "SCT", "Neoplasm")
_ENHANCING = Code("C113842", "NCIt", "Enhancing Lesion")
_NECROSIS = Code("6574001", "SCT", "Necrosis")
_EDEMA = Code("79654002", "SCT", "Edema")
_AI = Code("123110", "DCM", "Artificial Intelligence")


@dataclass(frozen=True)
class SegmentSpec:
    """One SEG segment: its label, description and segmented property type."""

    label: str
    description: str
    property_type: Code
    rgb: tuple[int, int, int]  # recommended display colour (stored as CIELab)


#: segments="regions": nested BraTS regions, channel order of ``labels_to_regions``.
REGION_SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(
        "WT", "whole tumour: necrosis/non-enhancing core, oedema, enhancing", _NEOPLASM, (0, 200, 0)
    ),
    SegmentSpec(
        "TC",
        "tumour core: necrosis/non-enhancing core and enhancing tumour",
        _NEOPLASM,
        (220, 0, 0),
    ),
    SegmentSpec("ET", "enhancing tumour", _ENHANCING, (255, 220, 0)),
)
#: segments="labels": the three disjoint classes, internal label value = index + 1.
LABEL_SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec("NCR", "necrotic / non-enhancing tumour core (label 1)", _NECROSIS, (220, 0, 0)),
    SegmentSpec("ED", "peritumoural oedema (label 2)", _EDEMA, (0, 200, 0)),
    SegmentSpec("ET", "enhancing tumour (label 3)", _ENHANCING, (255, 220, 0)),
)
SEGMENT_SETS = {"regions": REGION_SEGMENTS, "labels": LABEL_SEGMENTS}


def algorithm_identification() -> hd.AlgorithmIdentificationSequence:
    """TransMed, its package version, family DCM 123110 "Artificial Intelligence"."""
    from transmed import __version__

    return hd.AlgorithmIdentificationSequence(name="TransMed", family=_AI, version=__version__)


def segment_masks(labels: np.ndarray, segments: str = "regions") -> np.ndarray:
    """Boolean masks ``(3, ni, nj, nk)`` for the segments of ``segments`` ("regions"/"labels")."""
    if segments not in SEGMENT_SETS:
        raise ValueError(f"segments must be one of {sorted(SEGMENT_SETS)}, got {segments!r}")
    if segments == "regions":
        return labels_to_regions(labels)
    arr = np.asarray(labels)
    masks = labels_to_regions(arr)  # validates the values 0-3
    return np.stack([arr == 1, arr == 2, masks[2]])


def _frame_order(source: DicomSeries) -> np.ndarray:
    """For each SEG pixel-array frame (source image / frame order), the slice index k."""
    if not source.is_multiframe:
        return np.arange(len(source.frames))  # source.datasets are already in slice order
    order = np.empty(len(source.frames), dtype=np.int64)
    for k, frame in enumerate(source.frames):
        order[frame.frame] = k  # frame.frame: 0-based frame number in the source file
    return order


def build_seg(
    labels: np.ndarray,
    source: DicomSeries,
    *,
    segments: str = "regions",
    series_number: int = 900,
    series_description: str = "TransMed segmentation",
    content_label: str = "TRANSMED",
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``labels`` that references every image of ``source``.

    Args:
        labels: internal labels 0-3, shape ``source.shape`` = ``(ni, nj, nk)`` (columns, rows,
            slices; see :mod:`transmed.io.dicom`).
        source: the series the labels were predicted on (its header datasets are the SEG's
            source images; patient, study and frame of reference are copied from them).
        segments: ``"regions"`` (WT, TC, ET; nested, overlapping) or ``"labels"`` (NCR, ED, ET).
        series_number, series_description, content_label: of the new SEG series.
        instance_number: InstanceNumber of the SEG.

    Returns:
        The Segmentation dataset (new SeriesInstanceUID and SOPInstanceUID). Empty frames are
        omitted; an all-empty prediction keeps one empty frame so the SEG stays valid.

    Raises:
        ValueError: wrong shape, label values outside 0-3, unknown ``segments``, a content label
            that is not a DICOM CS value (upper case, digits, space, underscore; <= 16 chars).
    """
    arr = np.asarray(labels)
    if arr.shape != tuple(source.shape):
        raise ValueError(
            f"labels of shape {arr.shape} do not match {source.label} grid {source.shape}"
        )
    if not re.fullmatch(r"[A-Z0-9 _]{1,16}", content_label):
        raise ValueError(f"content_label must be a DICOM CS value, got {content_label!r}")
    masks = segment_masks(arr, segments)  # (3, ni, nj, nk) bool; refuses bad values/segments
    specs = SEGMENT_SETS[segments]
    pixels = np.transpose(masks, (3, 2, 1, 0))  # (nk, nj, ni, S) = (frames, rows, cols, segs)
    pixels = np.ascontiguousarray(pixels[_frame_order(source)]).astype(np.uint8)
    algorithm = algorithm_identification()
    descriptions = []
    for n, spec in enumerate(specs, start=1):
        desc = hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=spec.label,
            segmented_property_category=_CATEGORY,
            segmented_property_type=spec.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*spec.rgb),
        )
        desc.SegmentDescription = spec.description  # (0062,0006), optional free text
        descriptions.append(desc)
    # highdicom refuses a SEG whose frames would all be omitted; keep empty frames then.
    omit_empty = bool(pixels.any())
    from transmed import __version__

    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="TransMed",
        manufacturer_model_name="TransMed",
        software_versions=__version__,
        device_serial_number="0",
        content_label=content_label,
        content_description=f"TransMed {segments}",
        omit_empty_frames=omit_empty,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    seg.SeriesDescription = series_description
    return seg


def write_seg(seg: Dataset, path: str | Path) -> Path:
    """Write ``seg`` atomically as a DICOM file (128-byte zero preamble, ``DICM``, file meta).

    Explicit VR Little Endian as set by :func:`build_seg`; the file meta group is validated by
    pydicom (``enforce_file_format=True``).
    """
    path = Path(path)
    seg.preamble = b"\x00" * 128
    return atomic_write(path, lambda fh: seg.save_as(fh, enforce_file_format=True), ".dcm")


def read_seg(seg: str | Path | Dataset, source: DicomSeries) -> dict[str, np.ndarray]:
    """Segment label -> boolean mask ``(ni, nj, nk)`` on ``source``'s grid.

    Frames of the SEG are matched to the source images by the SOP Instance UIDs (and frame
    numbers) they reference, with highdicom; source images without a SEG frame are empty.

    Raises:
        DicomError: not a SEG, or one that references other images than ``source``.
    """
    try:
        obj = (
            hd.seg.Segmentation.from_dataset(seg, copy=True)
            if isinstance(seg, Dataset)
            else hd.seg.segread(seg)
        )
    except Exception as exc:  # highdicom raises ValueError/AttributeError/TypeError for non-SEG
        where = "SEG dataset" if isinstance(seg, Dataset) else str(seg)
        raise DicomError(f"{where}: not a readable DICOM SEG ({type(exc).__name__})") from None
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in obj.get("ReferencedSeriesSequence", [])
        if str(series.SeriesInstanceUID) == source.series_uid
        for item in series.get("ReferencedInstanceSequence", [])
    }
    expected = {f.sop_instance_uid for f in source.frames}
    if not referenced or not referenced <= expected:
        raise DicomError(f"SEG does not reference the images of {source.label}")
    numbers = [int(d.SegmentNumber) for d in obj.SegmentSequence]
    try:
        if source.is_multiframe:
            pixels = obj.get_pixels_by_source_frame(
                source_sop_instance_uid=source.frames[0].sop_instance_uid,
                source_frame_numbers=[f.frame + 1 for f in source.frames],  # type: ignore[operator]
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
            )
        else:
            pixels = obj.get_pixels_by_source_instance(
                source_sop_instance_uids=[f.sop_instance_uid for f in source.frames],
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
            )
    except (ValueError, KeyError, IndexError) as exc:
        raise DicomError(f"SEG does not reference {source.label} ({exc})") from None
    # pixels: (nk, nj, ni, S) in slice order
    out = {}
    for s, desc in enumerate(obj.SegmentSequence):
        out[str(desc.SegmentLabel)] = np.ascontiguousarray(
            np.transpose(pixels[..., s] > 0, (2, 1, 0))
        )
    return out


__all__ = [
    "LABEL_SEGMENTS",
    "REGION_SEGMENTS",
    "SegmentSpec",
    "algorithm_identification",
    "build_seg",
    "read_seg",
    "segment_masks",
    "write_seg",
]
