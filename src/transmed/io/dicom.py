"""Reading an MR study from a folder of DICOM files into per-modality :class:`Volume` objects.

Stages (each refuses bad input with :class:`DicomError`, naming the file or series, never a
patient identifier):

1. :func:`scan_folder`: headers only (``stop_before_pixels=True``, ``force=False``), with caps
   on file count, file size and sequence nesting; non-DICOM files, DICOMDIRs and non-MR objects
   (SEG, SR, KO, ...) are skipped with a recorded reason; instances grouped by series.
2. :class:`ModalityRules`: which series is t1 / t1ce / t2 / flair, from ordered regex rules on
   SeriesDescription, ProtocolName and sequence attributes (configurable from YAML or a dict).
3. :class:`DicomSeries`: header consistency checks (matrix, spacing, orientation, slice
   positions, pixel format, transfer syntax, voxel cap) before any pixel is read; then
   :meth:`DicomSeries.volume` reads the pixels and applies the rescale slope / intercept.
4. :func:`load_study`: one study, one series per modality, the choice among duplicates recorded.

Voxel order and affine (the SEG writer and the service rely on it): ``Volume.data[i, j, k]``
with i = column index (along ImageOrientationPatient[:3], step PixelSpacing[1]), j = row index
(along IOP[3:], step PixelSpacing[0]), k = slice index in increasing order along the slice
normal IOP[:3] × IOP[3:]; the origin is ImagePositionPatient of slice k = 0; the LPS affine is
turned into RAS+ by diag(-1, -1, 1, 1). So a slice's pixel array ``(rows, columns)`` is
``data[:, :, k].T``. This keeps the scanner's own voxel grid (no resampling, no reorientation):
a SEG frame is exactly a source slice, and preprocessing reorients to RAS where it needs to.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from highdicom.spatial import get_volume_positions
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from transmed.data.labels import MODALITIES
from transmed.io.nifti import DEFAULT_MAX_VOXELS, Volume

log = logging.getLogger(__name__)

#: Refuse folders with more files than this (each one is opened to read its header).
DEFAULT_MAX_FILES = 20_000
#: Skip files larger than this many bytes (a 512 × 512 × 400 16-bit enhanced MR is ~200 MB).
DEFAULT_MAX_FILE_BYTES = 1 << 30
#: Refuse datasets whose sequences nest deeper than this (enhanced MR needs ~3 levels).
MAX_SEQUENCE_DEPTH = 16
#: RAS <-> LPS (the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
#: SOP classes read as MR images; every other object in a study folder is skipped.
MR_SOP_CLASSES = frozenset(
    {MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE, LEGACY_ENHANCED_MR_IMAGE_STORAGE}
)
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR

_ORTHO_TOL = 1e-3  # |r|, |c| within 1e-3 of 1 and r·c within 1e-3 of 0
_ORIENT_TOL = 1e-4  # IOP components equal within a series
_SPACING_RTOL = 1e-3  # PixelSpacing equal within a series
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class DicomError(ValueError):
    """A DICOM file, series or study that cannot be used; the message names the file or series
    and the problem, never a patient identifier."""


def is_valid_uid(value: object) -> bool:
    """True for a DICOM UID: digits and dots (``^[0-9]+(\\.[0-9]+)*$``), at most 64 chars."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


# --------------------------------------------------------------------------------------------
# 1. Scanning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan left out, and why (non-DICOM, DICOMDIR, not an MR image, too large)."""

    path: Path
    reason: str


@dataclass
class ScanResult:
    """Headers of the MR instances under a folder, grouped by SeriesInstanceUID."""

    root: Path
    series: dict[str, list[tuple[Path, Dataset]]] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    #: series UID -> why the series cannot be read (e.g. an instance truncated before its pixels)
    problems: dict[str, str] = field(default_factory=dict)
    #: MR files cut short before their series UID: any series may miss a slice
    unattributed: list[str] = field(default_factory=list)

    @property
    def study_uids(self) -> set[str]:
        return {str(items[0][1].StudyInstanceUID) for items in self.series.values()}

    def build(self, series_uid: str) -> DicomSeries:
        """Check and build one series (see :meth:`DicomSeries.from_headers`).

        Raises:
            DicomError: the series is unknown, marked broken by the scan, or fails its checks.
        """
        if series_uid not in self.series:
            raise DicomError(f"series {series_uid}: not found in the scanned folder")
        if series_uid in self.problems:
            raise DicomError(f"series ({series_uid}), {self.problems[series_uid]}")
        return DicomSeries.from_headers(self.series[series_uid], root=self.root)


def _show(path: Path, root: Path | None) -> str:
    """The path relative to the scanned root (the root folder is often named after the patient)."""
    if root is not None:
        try:
            rel = path.relative_to(root)
            return str(rel) if str(rel) != "." else path.name
        except ValueError:
            pass
    return str(path)


def _sequence_depth(ds: Dataset, cap: int) -> int:
    """Deepest sequence nesting in ``ds``, walked iteratively (no recursion), stopping at cap+1."""
    deepest = 0
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > cap:
            return deepest
        for elem in item:  # accessing .value converts pydicom's raw (lazily parsed) sequences
            if elem.VR == "SQ":
                stack.extend((child, depth + 1) for child in elem.value)
    return deepest


#: Tags that may hold an image's pixels; a header read stops right before one of them.
_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")  # LE
_PIXEL_TAGS_BE = (b"\x7f\xe0\x00\x10", b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09")


def _read_header(path: Path, where: str, max_depth: int) -> tuple[Dataset, bool]:
    """Header of ``path`` and whether a pixel data element follows it in the file.

    pydicom returns a partial dataset, without complaint, for a file cut short inside its
    header; an image file whose header read reaches the end of the file has lost its pixels.
    """
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=False)
            following = fh.read(4)  # the stop leaves the file at the pixel data tag
        depth = _sequence_depth(ds, max_depth)
    except InvalidDicomError:
        raise DicomError(f"{where}: not a DICOM file (no DICM preamble)") from None
    except RecursionError:
        raise DicomError(
            f"{where}: sequences nested too deeply to parse (pathological file)"
        ) from None
    except Exception as exc:  # pydicom raises EOFError, OSError, ValueError, struct.error, ...
        raise DicomError(
            f"{where}: unreadable or truncated DICOM header ({type(exc).__name__})"
        ) from None
    if depth > max_depth:
        raise DicomError(f"{where}: sequences nested deeper than {max_depth} levels")
    return ds, following in _PIXEL_TAGS + _PIXEL_TAGS_BE


def _no_pixels(where: str) -> str:
    return f"{where}: file ends before its PixelData element (truncated, or no pixel data)"


def read_header(
    path: str | Path, *, root: Path | None = None, max_depth: int = MAX_SEQUENCE_DEPTH
) -> Dataset:
    """Read one file's header (no pixel data) with pydicom, refusing what cannot be an MR image.

    Raises:
        DicomError: not a DICOM file (no ``DICM`` preamble), unreadable header, sequences
            nested deeper than ``max_depth``, an MR image whose file ends before its pixel data
            (truncated).
    """
    path = Path(path)
    where = _show(path, root)
    if not path.is_file():
        raise DicomError(f"{where}: file not found")
    ds, has_pixels = _read_header(path, where, max_depth)
    if str(ds.get("SOPClassUID", "")) in MR_SOP_CLASSES and not has_pixels:
        raise DicomError(_no_pixels(where))
    return ds


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # deterministic order
        for name in sorted(filenames):
            yield Path(dirpath) / name


def scan_folder(
    folder: str | Path,
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_depth: int = MAX_SEQUENCE_DEPTH,
) -> ScanResult:
    """Read the headers of every MR image under ``folder`` (recursively) and group them by series.

    Files that are not DICOM, DICOMDIRs, non-MR objects, files over ``max_file_bytes`` or with
    pathological nesting are skipped with a reason. An MR instance whose file is cut short
    before its pixel data is *not* skipped (that would silently drop a slice): its series is
    marked broken and refused when it is built.

    A single file may be passed instead of a folder; it must then be a readable MR image.

    Raises:
        DicomError: ``folder`` missing, more than ``max_files`` files, or an explicitly given
            file that is not a readable MR image.
    """
    folder = Path(folder)
    if folder.is_file():
        ds = read_header(folder, max_depth=max_depth)
        sop = str(ds.get("SOPClassUID", ""))
        if sop not in MR_SOP_CLASSES:
            name = UID(sop).name if sop else "missing"
            raise DicomError(f"{folder}: not an MR image (SOP class {name})")
        result = ScanResult(root=folder.parent)
        _add(result, folder, ds, has_pixels=True)
        return result
    if not folder.is_dir():
        raise DicomError(f"{folder}: folder not found")
    result = ScanResult(root=folder)
    for n, path in enumerate(_walk(folder), start=1):
        if n > max_files:
            raise DicomError(f"{folder}: more than {max_files} files (raise max_files if intended)")
        where = _show(path, folder)
        if path.name.upper() == "DICOMDIR":
            result.skipped.append(SkippedFile(path, "DICOMDIR (a media index, not an image)"))
            continue
        try:
            size = path.stat().st_size
        except OSError:
            result.skipped.append(SkippedFile(path, "cannot be read"))
            continue
        if size > max_file_bytes:
            result.skipped.append(SkippedFile(path, f"larger than {max_file_bytes} bytes"))
            continue
        try:
            ds, has_pixels = _read_header(path, where, max_depth)
        except DicomError as exc:
            result.skipped.append(SkippedFile(path, str(exc).removeprefix(f"{where}: ")))
            continue
        sop = str(ds.get("SOPClassUID", ""))
        if sop == _MEDIA_STORAGE_DIRECTORY:
            result.skipped.append(SkippedFile(path, "DICOMDIR (a media index, not an image)"))
        elif sop not in MR_SOP_CLASSES:
            name = UID(sop).name if sop else "missing"
            result.skipped.append(SkippedFile(path, f"not an MR image (SOP class {name})"))
        else:
            _add(result, path, ds, root=folder, has_pixels=has_pixels)
    if result.skipped:
        log.info("%s: skipped %d file(s) that are not MR images", folder.name, len(result.skipped))
    return result


def _add(
    result: ScanResult, path: Path, ds: Dataset, *, root: Path | None = None, has_pixels: bool
) -> None:
    where = _show(path, root)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not is_valid_uid(str(ds.get(key, ""))):
            if not has_pixels:  # a cut-off MR file of unknown series: it may be any slice
                result.unattributed.append(f"{_no_pixels(where)}; its series is unknown")
            else:
                result.skipped.append(SkippedFile(path, f"missing or malformed {key}"))
            return
    series_uid = str(ds.SeriesInstanceUID)
    result.series.setdefault(series_uid, []).append((path, ds))
    if not has_pixels:
        result.problems.setdefault(series_uid, _no_pixels(where))


# --------------------------------------------------------------------------------------------
# 2. Frames and geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRef:
    """One 2D image of a series: a single-frame file, or one frame of a multi-frame file.

    Attributes:
        path: the file holding the pixels.
        frame: 0-based frame number in a multi-frame file; ``None`` for a single-frame file.
        sop_instance_uid: the file's SOPInstanceUID.
        position: ImagePositionPatient (LPS mm) of the first transmitted pixel.
        slope, intercept: rescale to stored values -> real values.
    """

    path: Path
    frame: int | None
    sop_instance_uid: str
    position: tuple[float, float, float]
    slope: float = 1.0
    intercept: float = 0.0


@dataclass(frozen=True)
class _FrameGeometry:
    orientation: tuple[float, ...]  # 6 direction cosines, LPS
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    position: tuple[float, float, float]
    slope: float
    intercept: float


def _floats(value: Any, n: int, what: str, where: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise DicomError(f"{where}: malformed {what}") from None
    if len(out) != n or not all(np.isfinite(out)):
        raise DicomError(f"{where}: {what} must be {n} finite numbers")
    return out


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    seq = ds.get(sequence) if ds is not None else None
    return seq[0] if seq else None


def _geometry(
    orientation: Dataset | None,
    measures: Dataset | None,
    position: Dataset | None,
    rescale: Dataset | None,
    where: str,
) -> _FrameGeometry:
    """Geometry and rescale of one frame from the datasets holding each attribute (for a
    classic image all four are the image itself; for an enhanced one, functional groups)."""
    values = {}
    for item, key in (
        (orientation, "ImageOrientationPatient"),
        (position, "ImagePositionPatient"),
        (measures, "PixelSpacing"),
    ):
        values[key] = item.get(key) if item is not None else None
        if values[key] is None:
            raise DicomError(f"{where}: missing {key} (no patient geometry)")
    rescale = rescale if rescale is not None else Dataset()
    slope, intercept = rescale.get("RescaleSlope"), rescale.get("RescaleIntercept")
    return _FrameGeometry(
        orientation=_floats(values["ImageOrientationPatient"], 6, "IOP", where),
        pixel_spacing=_floats(values["PixelSpacing"], 2, "PixelSpacing", where),  # type: ignore[arg-type]
        position=_floats(values["ImagePositionPatient"], 3, "IPP", where),  # type: ignore[arg-type]
        slope=float(slope) if slope is not None else 1.0,
        intercept=float(intercept) if intercept is not None else 0.0,
    )


def _enhanced_frames(ds: Dataset, where: str) -> list[_FrameGeometry]:
    """Per-frame geometry of an enhanced multi-frame image from its functional groups.

    Each macro (plane position / orientation, pixel measures, pixel value transformation) is
    taken from the frame's PerFrameFunctionalGroupsSequence item, else from the shared group.
    """
    n_frames = int(ds.get("NumberOfFrames") or 1)
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != n_frames:
        raise DicomError(
            f"{where}: enhanced image with {n_frames} frames has {len(per_frame)} "
            "PerFrameFunctionalGroupsSequence items (no per-frame geometry)"
        )
    frames = []
    for n, groups in enumerate(per_frame):
        macros = [
            _item(groups, name) or _item(shared, name)
            for name in (
                "PlaneOrientationSequence",
                "PixelMeasuresSequence",
                "PlanePositionSequence",
                "PixelValueTransformationSequence",
            )
        ]
        frames.append(_geometry(*macros, where=f"{where}, frame {n + 1}"))
    return frames


def _check_pixel_format(ds: Dataset, where: str) -> None:
    """Pixel module and transfer syntax checks that need no pixel data."""
    spp = int(ds.get("SamplesPerPixel") or 1)
    if spp != 1:
        raise DicomError(f"{where}: SamplesPerPixel is {spp}; only greyscale (1) MR is supported")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{where}: PhotometricInterpretation {photometric} is not greyscale")
    bits = int(ds.get("BitsAllocated") or 0)
    if bits not in (8, 16, 32):
        raise DicomError(f"{where}: BitsAllocated {bits} not supported (8, 16 or 32)")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or cols < 1:
        raise DicomError(f"{where}: empty image matrix (Rows {rows}, Columns {cols})")
    meta = getattr(ds, "file_meta", None)
    tsyntax = UID(str(meta.get("TransferSyntaxUID") or "")) if meta is not None else UID("")
    if not tsyntax:
        raise DicomError(f"{where}: no TransferSyntaxUID in the file meta information")
    if not tsyntax.is_transfer_syntax:
        raise DicomError(f"{where}: unknown transfer syntax {tsyntax}")
    if tsyntax.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            raise DicomError(
                f"{where}: pixel data in transfer syntax '{tsyntax.name}' ({tsyntax}) cannot be "
                "decoded by pydicom; convert the series to an uncompressed transfer syntax"
            ) from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise DicomError(
                f"{where}: pixel data in transfer syntax '{tsyntax.name}' need an extra "
                f"package to decode ({needs})"
            )


def _check_orientation(orientation: Sequence[float], where: str) -> tuple[np.ndarray, np.ndarray]:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    if (
        abs(np.linalg.norm(row) - 1.0) > _ORTHO_TOL
        or abs(np.linalg.norm(col) - 1.0) > _ORTHO_TOL
        or abs(float(row @ col)) > _ORTHO_TOL
    ):
        raise DicomError(
            f"{where}: ImageOrientationPatient {list(orientation)} is not two orthonormal vectors"
        )
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _diagnose_positions(distances: np.ndarray, where: str) -> str:
    """Why slice positions along the normal do not form a regular stack (for the message)."""
    d = np.sort(distances)
    steps = np.diff(d)
    if np.any(steps < 1e-3):
        at = float(d[1:][steps < 1e-3][0])
        return f"{where}: duplicate slice position at {at:.3f} mm along the slice normal"
    median = float(np.median(steps))
    if np.any(steps > 1.5 * median):
        at = float(d[:-1][steps > 1.5 * median][0])
        return (
            f"{where}: missing slice(s): a gap of {float(steps.max()):.3f} mm after {at:.3f} mm "
            f"where the median slice spacing is {median:.3f} mm"
        )
    return (
        f"{where}: slices are not a regular stack (spacing {float(steps.min()):.3f}-"
        f"{float(steps.max()):.3f} mm, or not stacked along the slice normal)"
    )


def _stack(
    frames: list[FrameRef], orientation: Sequence[float], where: str
) -> tuple[list[FrameRef], np.ndarray]:
    """Sort frames along the slice normal and return them with the step vector (LPS mm).

    highdicom's :func:`get_volume_positions` decides whether the positions form a regular,
    perpendicular stack and gives the sort order ("RD" index convention = our i, j axes, right
    handed, so k runs along row × column). Our own code only diagnoses *why* a stack is refused
    (duplicate, gap, irregular), because highdicom answers just ``None``.
    """
    if len(frames) < 2:
        raise DicomError(f"{where}: only {len(frames)} slice; a 3D series needs at least 2")
    positions = [list(f.position) for f in frames]
    spacing, indices = get_volume_positions(
        positions,
        list(orientation),
        index_convention="RD",
        handedness="RIGHT_HANDED",
        rtol=0.02,
        sort=True,
    )
    if spacing is None or indices is None:
        row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
        normal = np.cross(row, col)
        raise DicomError(_diagnose_positions(np.asarray(positions) @ normal, where))
    if spacing <= 0:
        raise DicomError(f"{where}: zero slice spacing")
    ordered: list[FrameRef | None] = [None] * len(frames)
    for frame, k in zip(frames, indices, strict=True):
        ordered[k] = frame
    if any(f is None for f in ordered):
        raise DicomError(f"{where}: slice positions do not fill the stack")
    stack = [f for f in ordered if f is not None]
    first, last = np.asarray(stack[0].position), np.asarray(stack[-1].position)
    return stack, (last - first) / (len(stack) - 1)


def _collect_frames(
    items: Sequence[tuple[Path, Dataset]], label: str, root: Path | None, multiframe: bool
) -> tuple[list[FrameRef], list[tuple[str, _FrameGeometry]], set[tuple[int, int]]]:
    """Every frame of a series with its geometry, and the set of (Rows, Columns) seen."""
    frames: list[FrameRef] = []
    geometries: list[tuple[str, _FrameGeometry]] = []
    dims: set[tuple[int, int]] = set()
    sops: set[str] = set()
    for path, ds in items:
        where = f"{label}, {_show(path, root)}"
        _check_pixel_format(ds, where)
        dims.add((int(ds.Rows), int(ds.Columns)))
        sop = str(ds.SOPInstanceUID)
        if sop in sops:
            raise DicomError(f"{where}: duplicate SOPInstanceUID {sop} in the series")
        sops.add(sop)
        if multiframe:
            geoms = _enhanced_frames(ds, where)
            numbers: list[int | None] = list(range(len(geoms)))
        else:
            geoms, numbers = [_geometry(ds, ds, ds, ds, where)], [None]
        for g, n in zip(geoms, numbers, strict=True):
            geometries.append((where, g))
            frames.append(FrameRef(path, n, sop, g.position, g.slope, g.intercept))
    return frames, geometries, dims


def _check_consistency(
    geometries: list[tuple[str, _FrameGeometry]], dims: set[tuple[int, int]], label: str
) -> tuple[np.ndarray, np.ndarray, _FrameGeometry]:
    """One matrix size, one orthonormal orientation and one positive pixel spacing per series.

    Returns:
        unit row direction, unit column direction (LPS), and the first frame's geometry.
    """
    if len(dims) != 1:
        raise DicomError(f"{label}: mixed image sizes (Rows, Columns) {sorted(dims)}")
    where0, g0 = geometries[0]
    row_dir, col_dir = _check_orientation(g0.orientation, where0)
    for where, g in geometries:
        if np.max(np.abs(np.subtract(g.orientation, g0.orientation))) > _ORIENT_TOL:
            raise DicomError(
                f"{where}: ImageOrientationPatient differs within the series (mixed "
                "orientations, e.g. a localizer)"
            )
        if not np.allclose(g.pixel_spacing, g0.pixel_spacing, rtol=_SPACING_RTOL, atol=0):
            raise DicomError(f"{where}: PixelSpacing differs within the series")
    if min(g0.pixel_spacing) <= 0:
        raise DicomError(f"{where0}: non-positive PixelSpacing {list(g0.pixel_spacing)}")
    return row_dir, col_dir, g0


# --------------------------------------------------------------------------------------------
# 3. Series
# --------------------------------------------------------------------------------------------


@dataclass
class DicomSeries:
    """One MR series after header checks: sorted frames, grid and affine; pixels read on demand.

    Attributes:
        series_uid, study_uid: the series' and its study's instance UIDs.
        description: SeriesDescription ("" when absent).
        datasets: header datasets (no pixel data) in slice order for single-frame series, or the
            one header of an enhanced multi-frame file.
        frames: the 2D images in slice order k = 0 .. nk - 1.
        shape: (columns, rows, slices) = (ni, nj, nk) voxels.
        affine: (4, 4) voxel (i, j, k) -> RAS+ mm (see the module docstring).
        spacing: (column step, row step, slice step) in mm = (PixelSpacing[1], PixelSpacing[0],
            distance between slices).
        root: the scanned folder (file names in messages are shown relative to it).
    """

    series_uid: str
    study_uid: str
    description: str
    datasets: list[Dataset]
    frames: list[FrameRef]
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    series_number: int | None = None
    frame_of_reference_uid: str | None = None
    root: Path | None = None

    @property
    def is_multiframe(self) -> bool:
        return self.frames[0].frame is not None

    @property
    def lps_affine(self) -> np.ndarray:
        """(4, 4) voxel (i, j, k) -> LPS mm (DICOM patient coordinates)."""
        return LPS_TO_RAS @ self.affine

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def label(self) -> str:
        """How messages name the series: number, description and UID (never the patient)."""
        number = f"#{self.series_number} " if self.series_number is not None else ""
        desc = f"'{self.description}' " if self.description else ""
        return f"series {number}{desc}({self.series_uid})"

    @classmethod
    def from_headers(
        cls, items: Sequence[tuple[Path, Dataset]], *, root: Path | None = None
    ) -> DicomSeries:
        """Check the headers of one series and build its geometry (no pixel data read).

        Args:
            items: ``(path, header dataset)`` of every instance of the series, any order.
            root: folder the paths are shown relative to in messages.

        Raises:
            DicomError: mixed series/studies, mixed matrix size, pixel spacing or orientation,
                non-orthonormal orientation, non-positive spacing, duplicate or missing slices,
                non-uniform spacing, more than one multi-frame file, unsupported pixel format
                or transfer syntax.
        """
        if not items:
            raise DicomError("empty series")
        first = items[0][1]
        series_uid = str(first.SeriesInstanceUID)
        number = first.get("SeriesNumber")
        desc = str(first.get("SeriesDescription") or "")
        label = f"series {'#' + str(number) + ' ' if number is not None else ''}({series_uid})"
        study_uids = {str(ds.StudyInstanceUID) for _, ds in items}
        if len(study_uids) != 1 or any(str(ds.SeriesInstanceUID) != series_uid for _, ds in items):
            raise DicomError(f"{label}: instances belong to different studies or series")
        multiframe = any(
            int(ds.get("NumberOfFrames") or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds
            for _, ds in items
        )
        if multiframe and len(items) > 1:
            raise DicomError(f"{label}: mixes {len(items)} files with multi-frame images")
        frames, geometries, dims = _collect_frames(items, label, root, multiframe)
        row_dir, col_dir, g0 = _check_consistency(geometries, dims, label)
        stack, step = _stack(frames, g0.orientation, label)
        row_step, col_step = g0.pixel_spacing  # DICOM order: [between rows, between columns]
        lps = np.eye(4)
        lps[:3, 0] = row_dir * col_step  # i: along a row = across columns
        lps[:3, 1] = col_dir * row_step  # j: down a column = across rows
        lps[:3, 2] = step
        lps[:3, 3] = stack[0].position
        ((rows, cols),) = dims
        if multiframe:
            datasets = [items[0][1]]
        else:
            by_sop = {str(ds.SOPInstanceUID): ds for _, ds in items}
            datasets = [by_sop[f.sop_instance_uid] for f in stack]
        frame_uid = first.get("FrameOfReferenceUID")
        return cls(
            series_uid=series_uid,
            study_uid=study_uids.pop(),
            description=desc,
            datasets=datasets,
            frames=stack,
            shape=(cols, rows, len(stack)),
            affine=LPS_TO_RAS @ lps,
            spacing=(float(col_step), float(row_step), float(np.linalg.norm(step))),
            series_number=int(number) if number is not None else None,
            frame_of_reference_uid=str(frame_uid) if frame_uid else None,
            root=root,
        )

    def check_size(self, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
        """Refuse a grid larger than ``max_voxels`` (from the headers, before any allocation)."""
        if self.n_voxels > max_voxels:
            raise DicomError(
                f"{self.label}: {self.shape} = {self.n_voxels:,} voxels exceeds the cap of "
                f"{max_voxels:,} (raise max_voxels if this is intended)"
            )

    def volume(self, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
        """Read the pixels into a float32 :class:`Volume` ``(ni, nj, nk)`` with the RAS affine.

        Stored values are rescaled by each frame's RescaleSlope / RescaleIntercept.

        Raises:
            DicomError: too many voxels (checked first), a file that is missing, truncated,
                changed since the scan, without PixelData, or with fewer pixel bytes than
                Rows × Columns × SamplesPerPixel × BitsAllocated / 8 per frame.
        """
        self.check_size(max_voxels)
        ni, nj, nk = self.shape
        data = np.empty(self.shape, dtype=np.float32)
        by_file: dict[Path, list[tuple[int, FrameRef]]] = {}
        for k, frame in enumerate(self.frames):
            by_file.setdefault(frame.path, []).append((k, frame))
        for path, entries in by_file.items():
            pixels = self._read_pixels(path, entries[0][1].sop_instance_uid)  # (frames, nj, ni)
            for k, frame in entries:
                plane = pixels[frame.frame if frame.frame is not None else 0]
                data[:, :, k] = plane.T.astype(np.float32) * frame.slope + frame.intercept
        return Volume(data=data, affine=self.affine.copy(), path=None)

    def _read_pixels(self, path: Path, sop_uid: str) -> np.ndarray:
        """Stored pixel values of one file as ``(frames, rows, columns)``."""
        where = f"{self.label}, {_show(path, self.root)}"
        try:
            ds = pydicom.dcmread(path, force=False)
        except InvalidDicomError:
            raise DicomError(f"{where}: not a DICOM file") from None
        except RecursionError:
            raise DicomError(f"{where}: sequences nested too deeply to parse") from None
        except Exception as exc:
            raise DicomError(
                f"{where}: unreadable or truncated file ({type(exc).__name__})"
            ) from None
        if str(ds.get("SOPInstanceUID", "")) != sop_uid:
            raise DicomError(f"{where}: file changed since the folder was scanned")
        if "PixelData" not in ds:
            raise DicomError(f"{where}: no PixelData element")
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        if (rows, cols) != (self.shape[1], self.shape[0]):
            raise DicomError(f"{where}: file changed since the folder was scanned")
        _check_pixel_format(ds, where)
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            need = rows * cols * int(ds.get("SamplesPerPixel") or 1) * int(ds.BitsAllocated) // 8
            have = len(ds.PixelData)
            if have < need * n_frames:
                raise DicomError(
                    f"{where}: PixelData has {have} bytes, fewer than the {need * n_frames} that "
                    f"{n_frames} frame(s) of {rows} × {cols} × {ds.BitsAllocated} bits need "
                    "(truncated file?)"
                )
        try:
            arr = ds.pixel_array
        except Exception as exc:  # decoder errors: corrupt or truncated compressed data
            raise DicomError(
                f"{where}: pixel data cannot be decoded ({type(exc).__name__})"
            ) from None
        arr = np.asarray(arr)
        return arr.reshape(n_frames, rows, cols)


# --------------------------------------------------------------------------------------------
# 4. Modality rules
# --------------------------------------------------------------------------------------------

#: Pattern pieces shared by the default rules (matched on normalised text, see ModalityRule).
_T1_LIKE = r"\bt1|mp ?rage|\bspgr\b|\bfspgr\b|\bbravo\b|\bvibe\b|\btfe\b"
_POST = r"\bpost|contrast|\bgad|\bgd\b|gado|\+ ?c(?![a-z0-9])|\bce\b|\bc\+|\+ ?gd"
_PRE = r"\bpre\b|\bnon ?contrast|\bwithout\b|\bw/o\b|\bnative\b|\bplain\b"


class ModalityRule(BaseModel):
    """One rule: a series is ``modality`` when every ``match`` regex is found and no ``exclude``.

    The text searched is the series' ``fields`` (attribute keywords) joined by " | ", lower-cased,
    with ``_`` and ``-`` turned into spaces (so ``t1_mprage`` reads ``t1 mprage`` and ``\\b``
    works between words). ``contrast`` = True / False requires a contrast agent to be recorded
    / absent (ContrastBolusAgent, or ContrastBolusUsageSequence in enhanced images).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: str
    match: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    contrast: bool | None = None
    fields: list[str] = Field(
        default_factory=lambda: [
            "SeriesDescription",
            "ProtocolName",
            "SequenceName",
            "PulseSequenceName",
        ]
    )

    @field_validator("modality")
    @classmethod
    def _known_modality(cls, value: str) -> str:
        if value not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {value!r}")
        return value

    @field_validator("match", "exclude")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {p!r}: {exc}") from None
        return patterns

    def matches(self, ds: Dataset) -> bool:
        """Whether the header ``ds`` (the series' first instance) satisfies this rule."""
        text = series_text(ds, self.fields)
        if not all(re.search(p, text, re.IGNORECASE) for p in self.match):
            return False
        if any(re.search(p, text, re.IGNORECASE) for p in self.exclude):
            return False
        return self.contrast is None or has_contrast_agent(ds) == self.contrast


def series_text(ds: Dataset, fields: Iterable[str]) -> str:
    """Normalised text a rule searches: the fields' values, lower-cased, ``_``/``-`` -> space."""
    parts = []
    for name in fields:
        value = ds.get(name)
        if value is None or value == "":
            continue
        parts.append(
            " ".join(str(v) for v in value)
            if isinstance(value, list | tuple | pydicom.multival.MultiValue)
            else str(value)
        )
    return re.sub(r"[_\-]+", " ", " | ".join(parts).lower())


def has_contrast_agent(ds: Dataset) -> bool:
    """A contrast agent recorded: ContrastBolusAgent (classic) or ContrastBolusUsageSequence."""
    if str(ds.get("ContrastBolusAgent") or "").strip():
        return True
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    usage = ds.get("ContrastBolusUsageSequence") or (shared or Dataset()).get(
        "ContrastBolusUsageSequence"
    )
    return any(
        str(u.get("ContrastBolusAgentAdministered", "")).upper() == "YES" for u in usage or []
    )


def _default_rules() -> list[ModalityRule]:
    return [
        # FLAIR first (T2 FLAIR names contain "t2"); a "T1 FLAIR" (GE's T1-weighted sagittal) is
        # not a FLAIR for BraTS. BraTS 2023 calls FLAIR "t2f".
        ModalityRule(modality="flair", match=[r"flair|dark ?fluid|\bt2f\b"], exclude=[r"\bt1"]),
        # post-contrast T1 before T1: explicit names (T1CE, T1C, T1+C, T1GD, T1 POST) ...
        ModalityRule(
            modality="t1ce",
            match=[r"\bt1 ?w? ?(?:ce|c|gd|\+ ?c|\+ ?gd|\+|post|contrast)(?![a-z0-9])"],
        ),
        # ... a T1-like name with a contrast word and no "pre" ...
        ModalityRule(modality="t1ce", match=[_T1_LIKE, _POST], exclude=[_PRE]),
        # ... or a T1-like series with a contrast agent recorded in the header.
        ModalityRule(modality="t1ce", match=[_T1_LIKE], exclude=[_PRE], contrast=True),
        ModalityRule(modality="t1", match=[_T1_LIKE]),
        # T2 but not T2* / gradient-echo susceptibility (not a BraTS contrast).
        ModalityRule(modality="t2", match=[r"\bt2"], exclude=[r"t2 ?\*|t2 ?star|\bswi\b"]),
    ]


class ModalityRules(BaseModel):
    """Ordered rules mapping a series to a modality; the first matching rule wins.

    Load from YAML (``rules: [{modality: t1ce, match: [...], exclude: [...]}, ...]``) with
    :meth:`from_yaml`, or from a dict with :meth:`from_dict`; :meth:`default` covers common
    scanner names (see :func:`_default_rules`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[ModalityRule] = Field(default_factory=_default_rules)

    @classmethod
    def default(cls) -> ModalityRules:
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModalityRules:
        """Rules from ``{"rules": [...]}``; a ValueError (pydantic's) names a bad field."""
        return cls.model_validate(dict(data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModalityRules:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read modality rules ({exc})") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping with a 'rules' list")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: invalid modality rules: {exc}") from None

    def classify(self, ds: Dataset) -> str | None:
        """The modality of the series whose first header is ``ds``, or ``None``."""
        for rule in self.rules:
            if rule.matches(ds):
                return rule.modality
        return None


# --------------------------------------------------------------------------------------------
# 5. Study
# --------------------------------------------------------------------------------------------


@dataclass
class SeriesChoice:
    """How the series of one modality was chosen among several candidates (best first)."""

    modality: str
    chosen: str  # SeriesInstanceUID
    candidates: list[str]
    refused: dict[str, str] = field(default_factory=dict)  # series UID -> why it was refused


@dataclass
class DicomStudy:
    """One MR study: the series chosen per modality, plus what was left out.

    Attributes:
        study_uid: StudyInstanceUID.
        series: modality -> the chosen :class:`DicomSeries`.
        unmatched: (series UID, description) of MR series no rule matched (DWI, localizers, ...).
        choices: modality -> the candidates and the reason for the choice.
        skipped: files left out by the scan.
        max_voxels: the cap applied by :meth:`volumes`.
    """

    study_uid: str
    series: dict[str, DicomSeries]
    unmatched: list[tuple[str, str]] = field(default_factory=list)
    choices: dict[str, SeriesChoice] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    max_voxels: int = DEFAULT_MAX_VOXELS

    def volumes(self) -> dict[str, Volume]:
        """modality -> float32 :class:`Volume` on that series' native grid, in MODALITIES order."""
        return {m: self.series[m].volume(self.max_voxels) for m in MODALITIES if m in self.series}

    @property
    def series_uids(self) -> dict[str, str]:
        return {m: s.series_uid for m, s in self.series.items()}


def _rank(items: Sequence[tuple[Path, Dataset]]) -> tuple[int, int, int]:
    """Sort key among series of one modality (higher is better): ORIGINAL over DERIVED images,
    then more instances / frames, then the later SeriesNumber."""
    ds = items[0][1]
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    original = int(not image_type or image_type[0] == "ORIGINAL")
    n = sum(int(d.get("NumberOfFrames") or 1) for _, d in items)
    number = ds.get("SeriesNumber")
    return original, n, int(number) if number is not None else -1


def load_study(
    folder: str | Path,
    *,
    rules: ModalityRules | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    study_uid: str | None = None,
    modalities: Sequence[str] = MODALITIES,
    max_files: int = DEFAULT_MAX_FILES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> DicomStudy:
    """Scan ``folder``, map series to modalities and check the chosen series' headers.

    No pixel data are read here; :meth:`DicomStudy.volumes` reads them.

    Duplicate modalities: when several series match one modality, candidates are ranked by
    (ORIGINAL before DERIVED ImageType, more slices, higher SeriesNumber, then SeriesInstanceUID)
    and the first one that passes the header checks is taken; the ranking and any refusals are
    recorded in :attr:`DicomStudy.choices` and logged.

    Args:
        folder: a folder (searched recursively) or a single multi-frame file.
        rules: modality rules; :meth:`ModalityRules.default` when ``None``.
        max_voxels: cap per series, checked from the headers.
        study_uid: the study to read when the folder holds several.
        modalities: the modalities that must be present.

    Raises:
        DicomError: an MR file cut short before its pixel data (it may be a slice of any
            series, so the whole study is refused), no MR series, several studies without
            ``study_uid``, a required modality without a usable series (the message names the
            modality), any header check failure of the only candidate of a modality, or a
            series over ``max_voxels``.
    """
    rules = rules or ModalityRules.default()
    scan = scan_folder(folder, max_files=max_files, max_file_bytes=max_file_bytes)
    name = Path(folder).name
    broken = scan.unattributed + list(scan.problems.values())
    if broken:
        # Refusing the study is the only safe answer: a header cut short may even carry a cut
        # (still well-formed) series UID, so the file may be a missing slice of any series.
        raise DicomError(f"{name}: {broken[0]}" + (f" (and {len(broken) - 1} more)"
                                                  if len(broken) > 1 else ""))  # fmt: skip
    studies = scan.study_uids
    if study_uid is not None:
        if not is_valid_uid(study_uid):
            raise DicomError(f"{name}: malformed study UID {study_uid!r}")
        if study_uid not in studies:
            raise DicomError(f"{name}: study {study_uid} not found")
        studies = {study_uid}
    if not studies:
        reasons = sorted({s.reason for s in scan.skipped})[:3]
        raise DicomError(f"{name}: no MR images found (skipped: {'; '.join(reasons) or 'none'})")
    if len(studies) > 1:
        raise DicomError(
            f"{name}: holds {len(studies)} studies ({', '.join(sorted(studies))}); pass study_uid"
        )
    (uid,) = studies
    candidates: dict[str, list[tuple[str, list[tuple[Path, Dataset]]]]] = {}
    unmatched: list[tuple[str, str]] = []
    for series_uid, items in sorted(scan.series.items()):
        if str(items[0][1].StudyInstanceUID) != uid:
            continue
        modality = rules.classify(items[0][1])
        desc = str(items[0][1].get("SeriesDescription") or "")
        if modality is None:
            unmatched.append((series_uid, desc))
        else:
            candidates.setdefault(modality, []).append((series_uid, items))
    chosen: dict[str, DicomSeries] = {}
    choices: dict[str, SeriesChoice] = {}
    for modality in MODALITIES:
        if modality not in candidates:
            continue
        ranked = sorted(candidates[modality], key=lambda c: (_rank(c[1]), c[0]), reverse=True)
        choice = SeriesChoice(modality, "", [u for u, _ in ranked])
        errors: list[DicomError] = []
        for series_uid, _items in ranked:
            try:
                series = scan.build(series_uid)
                series.check_size(max_voxels)
            except DicomError as exc:
                choice.refused[series_uid] = str(exc)
                errors.append(exc)
                continue
            chosen[modality], choice.chosen = series, series_uid
            break
        if not choice.chosen:
            if modality in modalities:
                if len(errors) == 1:
                    raise errors[0]
                raise DicomError(
                    f"{modality}: none of {len(errors)} matching series is usable: "
                    + " | ".join(str(e) for e in errors)
                )
            continue
        if len(ranked) > 1:
            log.info(
                "%s: %d series match; chose %s (ORIGINAL, most slices, latest number)",
                modality,
                len(ranked),
                chosen[modality].label,
            )
        choices[modality] = choice
    missing = [m for m in modalities if m not in chosen]
    if missing:
        found = ", ".join(f"'{d}'" for _, d in unmatched if d) or "none"
        raise DicomError(
            f"{name}: no series for modality {', '.join(missing)} in study {uid} "
            f"(unmatched series descriptions: {found}; {len(scan.skipped)} file(s) skipped); "
            "adjust the modality rules if a series is misnamed"
        )
    return DicomStudy(
        study_uid=uid,
        series=chosen,
        unmatched=unmatched,
        choices=choices,
        skipped=scan.skipped,
        max_voxels=max_voxels,
    )
