"""One case, loaded when it is opened: every volume on the prediction's grid, RAS voxel order.

NiiVue draws into a bitmap laid out like its background volume after *its* reorientation to
RAS. Serving every volume already in the closest-RAS voxel order (exact axis flips and
permutations, :mod:`transmed.transforms.spatial`) on one grid, the prediction's, makes that
bitmap exactly the label map in RAS order: voxel ``(x, y, z)`` of the drawing is byte
``x + X·(y + Y·z)``, and :meth:`LoadedCase.from_ras_bitmap` takes it back to the file's own voxel
order with the inverse flips. Modalities on another grid (native clinical series) are resampled
onto the prediction's grid (trilinear) for display only.

A label map on another grid than the T1ce, or one that cannot be read, is refused with a
:class:`~transmed.viewer.sources.ViewerError` the page shows; it is never shown misaligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from transmed.data.labels import CLASS_NAMES, REGIONS, LabelConvention, labels_to_regions
from transmed.io.nifti import DEFAULT_MAX_VOXELS, check_nifti_header, load_volume
from transmed.transforms import spatial
from transmed.viewer.sources import ViewCase, ViewerError

#: Largest distance (mm) between two affines' entries that still counts as the same grid.
GRID_ATOL_MM = 1e-3


@dataclass
class LoadedCase:
    """A case in memory: its reference grid and its labels (internal 0-3, file voxel order)."""

    case: ViewCase
    grid: spatial.Grid  # the prediction's grid (the T1ce's)
    internal: np.ndarray  # (X, Y, Z) uint8, internal labels, file voxel order
    file_values: np.ndarray | None  # (X, Y, Z) the prediction file's own values (NIfTI)
    convention: LabelConvention
    dicom: Any = None  # (DicomStudy, reference DicomSeries) for a DICOM case
    _volumes: dict[str, Any] = field(default_factory=dict)  # DICOM: modality -> Volume

    @property
    def to_ras(self) -> np.ndarray:
        return spatial.ras_orientation(self.grid.affine)

    @property
    def ras_grid(self) -> spatial.Grid:
        return spatial.reorient_grid(self.grid, self.to_ras)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.grid.affine[:3, :3]))) / 1000.0

    def volumes_ml(self, internal: np.ndarray | None = None) -> dict[str, float]:
        """Volume (ml) of WT, TC, ET and of each label."""
        lab = self.internal if internal is None else internal
        regions = labels_to_regions(lab)
        counts = np.bincount(lab.ravel(), minlength=4)
        out = {r: float(regions[i].sum()) * self.voxel_ml for i, r in enumerate(REGIONS)}
        out.update({CLASS_NAMES[c]: float(counts[c]) * self.voxel_ml for c in (1, 2, 3)})
        return {k: round(v, 3) for k, v in out.items()}

    def from_ras_bitmap(self, data: bytes) -> np.ndarray:
        """NiiVue's drawing bitmap (RAS order, x fastest) → internal labels in file order.

        Raises:
            ViewerError: wrong length or a value outside 0-3.
        """
        ras = self.ras_grid
        n = int(np.prod(ras.shape))
        if len(data) != n:
            raise ViewerError(f"drawing has {len(data)} voxels, the case grid {ras.shape} has {n}")
        arr = np.frombuffer(data, dtype=np.uint8).reshape(ras.shape, order="F")
        if arr.max(initial=0) > 3:
            raise ViewerError(f"drawing holds label {int(arr.max())}; expected 0-3")
        return spatial.reorient(arr, spatial.inverse_orientation(self.to_ras))

    def ras(self, data: np.ndarray) -> np.ndarray:
        return spatial.reorient(data, self.to_ras)

    def image(self, modality: str) -> np.ndarray:
        """The modality's intensities on the reference grid, file voxel order (float32 or the
        file's integer type)."""
        case = self.case
        if self.dicom is not None:
            vols = self._volumes or self.dicom[0].volumes()
            self._volumes = vols
            if modality not in vols:
                raise ViewerError(f"the study has no {modality} series")
            vol = vols[modality]
            data, affine = vol.data, vol.affine
        else:
            if modality not in case.images:
                raise ViewerError(f"case {case.case_id} has no {modality} image")
            path = case.images[modality]
            if modality in case.channels:
                img = check_nifti_header(path, allow_4d=True)
                data = np.asarray(img.dataobj[..., case.channels[modality]])
                affine = img.affine
            else:
                img = check_nifti_header(path)
                try:
                    data = np.asanyarray(img.dataobj)
                except Exception as exc:
                    raise ViewerError(f"{path.name}: voxel data unreadable ({exc})") from None
                data = data.reshape(data.shape[:3])
                affine = img.affine
        if data.shape[:3] == self.grid.shape and np.allclose(
            affine, self.grid.affine, atol=GRID_ATOL_MM
        ):
            return data
        return spatial.resample_to_grid(data, affine, self.grid, order=1)


def _same_grid(shape: tuple[int, ...], affine: np.ndarray, grid: spatial.Grid) -> bool:
    return tuple(shape[:3]) == tuple(grid.shape) and np.allclose(
        affine, grid.affine, atol=GRID_ATOL_MM
    )


def _load_nifti(case: ViewCase, max_voxels: int) -> LoadedCase:
    ref_mod = "t1ce" if "t1ce" in case.images else next(iter(case.images), None)
    if ref_mod is None:
        raise ViewerError(f"case {case.case_id}: no image found")
    ref_img = check_nifti_header(case.images[ref_mod], max_voxels=max_voxels,
                                 allow_4d=ref_mod in case.channels)  # fmt: skip
    ref_grid = spatial.Grid(tuple(int(s) for s in ref_img.shape[:3]), ref_img.affine.copy())  # type: ignore[arg-type]
    if case.prediction is None:  # annotate from scratch on the T1ce's grid
        internal = np.zeros(ref_grid.shape, dtype=np.uint8)
        return LoadedCase(case, ref_grid, internal, internal.copy(), case.label_convention())
    name = case.prediction.name
    try:
        vol = load_volume(case.prediction, max_voxels=max_voxels, dtype=np.int32)
    except ValueError as exc:
        raise ViewerError(f"label map {name}: {exc}") from None
    if not _same_grid(vol.shape3d, vol.affine, ref_grid):
        raise ViewerError(
            f"label map {name} is on another grid ({vol.shape3d}, spacing "
            f"{tuple(round(s, 3) for s in vol.spacing)} mm) than the {ref_mod} image "
            f"{case.images[ref_mod].name} ({ref_grid.shape}); refusing to show it misaligned"
        )
    values = vol.data
    conv = case.label_convention({int(v) for v in np.unique(values)})
    from transmed.data.labels import to_internal

    try:
        internal = to_internal(values, conv, source=name)
    except ValueError as exc:
        raise ViewerError(str(exc)) from None
    return LoadedCase(case, spatial.Grid(vol.shape3d, vol.affine), internal, values, conv)


def _seg_labels(masks: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Internal labels from SEG segments: WT/TC/ET (nested) or NCR/ED/ET (disjoint)."""
    out = np.zeros(shape, dtype=np.uint8)
    if "WT" in masks:
        out[masks["WT"]] = 2
        out[masks.get("TC", np.zeros(shape, bool))] = 1
    for name, value in (("NCR", 1), ("ED", 2)):
        if name in masks:
            out[masks[name]] = value
    if "ET" in masks:
        out[masks["ET"]] = 3
    return out


def _load_dicom(case: ViewCase, max_voxels: int) -> LoadedCase:
    from transmed.data.labels import CONVENTIONS
    from transmed.io.dicom import DicomError, load_study
    from transmed.viewer.saving import seg_module

    if case.dicom_folder is None:
        raise ViewerError(f"{case.case_id}: not a DICOM case (no study folder)")
    try:
        study = load_study(case.dicom_folder, max_voxels=max_voxels)
    except (DicomError, ValueError, OSError) as exc:
        raise ViewerError(f"study of {case.case_id}: {exc}") from None
    if "t1ce" not in study.series:
        raise ViewerError(f"study of {case.case_id}: no T1ce series (the SEG's reference)")
    series = study.series["t1ce"]
    grid = spatial.Grid(tuple(series.shape), np.asarray(series.affine, dtype=np.float64))  # type: ignore[arg-type]
    if case.seg is None:
        internal = np.zeros(grid.shape, dtype=np.uint8)
    else:
        try:
            masks = seg_module().read_seg(case.seg, series)
        except (DicomError, ValueError, OSError) as exc:
            raise ViewerError(f"SEG {case.seg.name}: {exc}") from None
        internal = _seg_labels(masks, grid.shape)
    return LoadedCase(case, grid, internal, None, CONVENTIONS["internal"], dicom=(study, series))


def load(case: ViewCase, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> LoadedCase:
    """Read a case's labels (and, for DICOM, its study headers); images are read per request.

    Raises:
        ViewerError: the case has a recorded problem, or its label map is corrupt, holds
            values its convention does not define, or lies on another grid than the T1ce.
    """
    if case.problem:
        raise ViewerError(f"case {case.case_id}: {case.problem}")
    if case.kind == "dicom":
        return _load_dicom(case, max_voxels)
    return _load_nifti(case, max_voxels)


def nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """An uncompressed NIfTI-1 file in memory (no gzip: the page opens faster on loopback)."""
    if data.dtype == np.float64 or data.dtype == np.bool_:
        data = data.astype(np.float32)
    elif data.dtype == np.int64 or data.dtype == np.uint64:
        data = data.astype(np.int32)
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return bytes(img.to_bytes())


def image_nifti(loaded: LoadedCase, modality: str) -> bytes:
    """The modality on the reference grid in RAS voxel order, as NIfTI bytes."""
    return nifti_bytes(loaded.ras(loaded.image(modality)), loaded.ras_grid.affine)


def labels_nifti(loaded: LoadedCase, internal: np.ndarray | None = None) -> bytes:
    """Internal labels (uint8, 0-3) in RAS voxel order, as NIfTI bytes (NiiVue's drawing)."""
    lab = loaded.internal if internal is None else internal
    return nifti_bytes(loaded.ras(lab.astype(np.uint8)), loaded.ras_grid.affine)
