"""NIfTI reading with header validation before any voxel is allocated, and atomic writing.

nibabel reads the header without touching the voxel data, so every check here (dimensions,
voxel-count cap, spacing, affine) runs on the header alone; only then is the array read.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from transmed.io.atomic import atomic_path

log = logging.getLogger(__name__)

#: Refuse volumes larger than this many voxels per 3D volume (≈ 512³). Configurable per call.
DEFAULT_MAX_VOXELS = 512**3
#: Refuse any single dimension above this, whatever the voxel count (NIfTI-2 allows 2**63).
MAX_DIM = 8192
#: qform and sform further apart than this (mm, at any corner of the volume) get a warning.
QFORM_SFORM_TOLERANCE_MM = 1.0


class NiftiHeaderError(ValueError):
    """A NIfTI file whose header or contents cannot be used; the message names the file."""


@dataclass
class Volume:
    """A 3D (or 4D channel-last) image with its voxel-to-world (RAS, mm) affine."""

    data: np.ndarray  # (X, Y, Z) or (X, Y, Z, C), in the file's voxel order
    affine: np.ndarray  # (4, 4) voxel index -> RAS+ world coordinates in mm
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])  # type: ignore[return-value]


def _proxy(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise NiftiHeaderError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for junk files
        raise NiftiHeaderError(f"{path}: not a readable NIfTI file ({exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiHeaderError(f"{path}: expected a NIfTI image, got {type(img).__name__}")
    return img


def check_nifti_header(
    path: str | Path, *, max_voxels: int = DEFAULT_MAX_VOXELS, allow_4d: bool = False
) -> nib.Nifti1Image:
    """Validate a NIfTI header without reading voxel data; return the lazy image.

    Checks: 3 dimensions (or 4 when ``allow_4d``), every dimension in 1..``MAX_DIM``, voxel
    count per 3D volume ≤ ``max_voxels`` (Python integers: no wrap-around), finite positive
    spacing, a finite non-singular affine, and, on the raw header before nibabel repairs it, no
    zero pixdim in a geometry without an sform. Warns (logging) on a zero pixdim beside an sform,
    on qform and sform more than ``QFORM_SFORM_TOLERANCE_MM`` apart, and on a single slice.

    Raises:
        NiftiHeaderError: naming the file and the problem.
    """
    path = Path(path)
    img = _proxy(path)
    shape = tuple(int(s) for s in img.shape)
    too_long = [s for s in shape if s > MAX_DIM]
    if too_long:
        raise NiftiHeaderError(
            f"{path}: dimension {too_long[0]:,} in shape {shape} is above the limit of "
            f"{MAX_DIM:,} voxels per axis"
        )
    # Trailing singleton dims (X, Y, Z, 1) are common in converted data; treat them as 3D.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    ndim_ok = len(shape) == 3 or (allow_4d and len(shape) == 4)
    if not ndim_ok:
        want = "3D or 4D" if allow_4d else "3D"
        raise NiftiHeaderError(f"{path}: expected a {want} image, got shape {shape}")
    if min(shape) < 1:
        raise NiftiHeaderError(f"{path}: empty dimension in shape {shape}")
    n_vox = math.prod(shape[:3])  # Python ints: an int64 product of NIfTI-2 dims can wrap to 0
    if n_vox > max_voxels:
        raise NiftiHeaderError(
            f"{path}: {shape[:3]} = {n_vox:,} voxels exceeds the cap of {max_voxels:,} "
            "(raise max_voxels if this is intended)"
        )
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise NiftiHeaderError(f"{path}: non-finite or non-positive voxel spacing {zooms.tolist()}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise NiftiHeaderError(f"{path}: affine has non-finite entries")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise NiftiHeaderError(f"{path}: singular affine (zero volume per voxel)")
    _check_geometry_codes(path, img, shape)
    return img


def _raw_header(path: Path, img: nib.Nifti1Image) -> nib.Nifti1Header:
    """The header as stored, before nibabel's load-time repairs (it sets a zero pixdim to 1)."""
    try:
        with ImageOpener(str(path)) as fh:
            return type(img.header).from_fileobj(fh, check=False)
    except Exception as exc:
        raise NiftiHeaderError(f"{path}: header unreadable ({exc})") from None


def _check_geometry_codes(path: Path, img: nib.Nifti1Image, shape: tuple[int, ...]) -> None:
    """Refuse a qform-only geometry built on a zero pixdim; warn on other doubtful geometry.

    nibabel repairs pixdim[1..3] = 0 to 1 mm on load, so the affine it reports for a file
    without an sform is a guess. With an sform (nibabel's choice when its code is set) pixdim
    does not enter the affine, and a zero is only worth a warning.
    """
    raw = _raw_header(path, img)
    pixdim = np.asarray(raw["pixdim"], dtype=np.float64)[1:4]
    sform_code, qform_code = int(raw["sform_code"]), int(raw["qform_code"])
    for axis, value in enumerate(pixdim, start=1):
        if np.isfinite(value) and value <= 0:
            what = f"{path}: pixdim[{axis}] is {value:g}"
            if sform_code == 0 and value == 0:
                how = "qform" if qform_code else "no qform/sform"
                raise NiftiHeaderError(
                    f"{what} ({how} geometry): the voxel size is unknown (nibabel would assume "
                    "1 mm); fix the header"
                )
            why = "the sform gives the geometry" if sform_code else "nibabel uses |pixdim|"
            log.warning("%s (%s)", what, why)
    if sform_code > 0 and qform_code > 0:
        try:
            q, s = img.header.get_qform(), img.header.get_sform()
        except Exception:  # a qform nibabel cannot build: the sform is used anyway
            q = s = np.eye(4)
        corners = np.array(
            [
                [i, j, k, 1.0]
                for i in (0, shape[0] - 1)
                for j in (0, shape[1] - 1)
                for k in (0, shape[2] - 1)
            ]
        ).T  # (4, 8) voxel corners
        gap = float(np.max(np.linalg.norm((q - s)[:3] @ corners, axis=0)))
        if gap > QFORM_SFORM_TOLERANCE_MM:
            log.warning(
                "%s: qform and sform disagree by up to %.1f mm; using the sform (as nibabel and "
                "ITK do); check the geometry", path, gap,
            )  # fmt: skip
    if len(shape) >= 3 and min(shape[:3]) == 1:
        log.warning("%s: single slice volume %s; 3D context and resampling are doubtful",
                    path, shape[:3])  # fmt: skip


def load_volume(
    path: str | Path,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    allow_4d: bool = False,
    dtype: type | np.dtype = np.float32,
    check_finite: bool = True,
) -> Volume:
    """Read a NIfTI file after validating its header.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        max_voxels: cap on voxels per 3D volume, checked before the data are read.
        allow_4d: accept (X, Y, Z, C) images (e.g. MSD's 4-modality files).
        dtype: output dtype; labels should be read with an integer dtype.
        check_finite: refuse NaN/Inf voxel values.

    Raises:
        NiftiHeaderError: bad header, unreadable or truncated data, or non-finite values.
    """
    path = Path(path)
    img = check_nifti_header(path, max_voxels=max_voxels, allow_4d=allow_4d)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated gzip, short file, ...
        raise NiftiHeaderError(f"{path}: voxel data unreadable or truncated ({exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if check_finite and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise NiftiHeaderError(f"{path}: contains non-finite voxel values (NaN or Inf)")
    if np.issubdtype(np.dtype(dtype), np.integer) and np.issubdtype(data.dtype, np.floating):
        rounded = np.rint(data)
        if not np.allclose(rounded, data, atol=1e-3):
            raise NiftiHeaderError(f"{path}: expected integer values, found fractional ones")
        data = rounded
    return Volume(data=np.ascontiguousarray(data, dtype=dtype), affine=img.affine.copy(), path=path)


def save_volume(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write a NIfTI file atomically: temp file in the same folder, fsync, rename.

    A crash never leaves a half-written file at ``path``; an existing file there is replaced
    only once the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64), header=header)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix) as tmp:
        nib.save(img, str(tmp))
    return path
