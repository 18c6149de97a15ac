"""Stage 3: one checked MR series, its voxel grid and affine; pixels read on demand.

:meth:`DicomSeries.from_headers` runs the header consistency checks (matrix, spacing,
orientation, slice positions, pixel format, transfer syntax; see :mod:`.frames`) before any
pixel is read; :meth:`DicomSeries.check_size` applies the voxel cap from the headers; then
:meth:`DicomSeries.volume` reads the pixels and applies the rescale slope / intercept.

Voxel order and affine (the SEG writer and the service rely on it): ``Volume.data[i, j, k]``
with i = column index (along ImageOrientationPatient[:3], step PixelSpacing[1]), j = row index
(along IOP[3:], step PixelSpacing[0]), k = slice index in increasing order along the slice
normal IOP[:3] × IOP[3:]; the origin is ImagePositionPatient of slice k = 0; the LPS affine is
turned into RAS+ by diag(-1, -1, 1, 1). So a slice's pixel array ``(rows, columns)`` is
``data[:, :, k].T``. This keeps the scanner's own voxel grid (no resampling, no reorientation):
a SEG frame is exactly a source slice, and preprocessing reorients to RAS where it needs to.

MONOCHROME1 (the lowest value is shown white) is inverted when the pixels are read, so that,
as for MONOCHROME2, a higher value always means more signal before any normalisation: the
rescaled values v of the whole series become ``min(v) + max(v) - v`` (the same range, the
darkest voxel at the series minimum). A series that mixes MONOCHROME1 and MONOCHROME2 is
refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from transmed.io.dicom.errors import DicomError, _show, malformed_header
from transmed.io.dicom.frames import (
    FrameRef,
    _check_consistency,
    _check_pixel_format,
    _collect_frames,
    _stack,
)
from transmed.io.nifti import DEFAULT_MAX_VOXELS, Volume

log = logging.getLogger("transmed.io.dicom")

#: RAS <-> LPS (the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    photometric: str = "MONOCHROME2"  # MONOCHROME1 is inverted by :meth:`volume`

    @property
    def is_multiframe(self) -> bool:
        return self.frames[0].frame is not None

    @property
    def lps_affine(self) -> np.ndarray:
        """(4, 4) voxel (i, j, k) -> LPS mm (DICOM patient coordinates)."""
        return LPS_TO_RAS @ self.affine

    @property
    def inverted(self) -> bool:
        """True when :meth:`volume` inverts the intensities (a MONOCHROME1 series)."""
        return self.photometric == "MONOCHROME1"

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
        photometric = {str(ds.get("PhotometricInterpretation", "MONOCHROME2")) for _, ds in items}
        if len(photometric) != 1:
            raise DicomError(
                f"{label}: mixes PhotometricInterpretation {sorted(photometric)} (an inverted "
                "grey scale in some slices only); export the series with one of them"
            )
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
            photometric=photometric.pop(),
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

        Stored values are rescaled by each frame's RescaleSlope / RescaleIntercept; a
        MONOCHROME1 series is then inverted within its own range (see the module docstring).

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
            with malformed_header(f"{self.label}, {_show(path, self.root)}"):
                pixels = self._read_pixels(path, entries[0][1].sop_instance_uid)  # (frames, nj, ni)
            for k, frame in entries:
                plane = pixels[frame.frame if frame.frame is not None else 0]
                data[:, :, k] = plane.T.astype(np.float32) * frame.slope + frame.intercept
        if self.inverted:  # before any normalisation: higher must mean more signal
            log.info("%s: MONOCHROME1, intensities inverted", self.label)
            data = np.subtract(data.min() + data.max(), data, out=data)
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
