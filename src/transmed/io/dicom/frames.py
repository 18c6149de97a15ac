"""Frames and their geometry: the header checks that run before any pixel is read.

A series is a list of :class:`FrameRef` (a single-frame file, or one frame of an enhanced
multi-frame file, its geometry taken from the functional groups). The checks here refuse
mixed matrix size, pixel spacing or orientation, non-orthonormal orientation, duplicate or
missing slices, non-uniform spacing, and unsupported pixel formats or transfer syntaxes;
:func:`_stack` sorts the frames along the slice normal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from highdicom.spatial import get_volume_positions
from pydicom.dataset import Dataset
from pydicom.uid import UID

from transmed.io.dicom.errors import DicomError, _item, _show

_ORTHO_TOL = 1e-3  # |r|, |c| within 1e-3 of 1 and r·c within 1e-3 of 0
_ORIENT_TOL = 1e-4  # IOP components equal within a series
_SPACING_RTOL = 1e-3  # PixelSpacing equal within a series


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
