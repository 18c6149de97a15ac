"""Stage 1: headers only, grouped by series.

:func:`scan_folder` reads headers only (``stop_before_pixels=True``, ``force=False``), with caps
on file count, file size and sequence nesting; non-DICOM files, DICOMDIRs and non-MR objects
(SEG, SR, KO, ...) are skipped with a recorded reason; instances are grouped by series in a
:class:`ScanResult`, whose :meth:`ScanResult.build` checks and builds one
:class:`~transmed.io.dicom.series.DicomSeries`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from transmed.io.dicom.errors import DicomError, _show, is_valid_uid, malformed_header
from transmed.io.dicom.series import DicomSeries

#: The package's logger, named as before the split, so logging set up for it keeps working.
log = logging.getLogger("transmed.io.dicom")

#: Refuse folders with more files than this (each one is opened to read its header).
DEFAULT_MAX_FILES = 20_000
#: Skip files larger than this many bytes (a 512 × 512 × 400 16-bit enhanced MR is ~200 MB).
DEFAULT_MAX_FILE_BYTES = 1 << 30
#: Refuse datasets whose sequences nest deeper than this (enhanced MR needs ~3 levels).
MAX_SEQUENCE_DEPTH = 16

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
#: SOP classes read as MR images; every other object in a study folder is skipped.
MR_SOP_CLASSES = frozenset(
    {MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE, LEGACY_ENHANCED_MR_IMAGE_STORAGE}
)
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR


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
        with malformed_header(f"series ({series_uid})"):
            return DicomSeries.from_headers(self.series[series_uid], root=self.root)


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
