"""NIfTI reading with header validation before any voxel is allocated, and atomic writing.

nibabel reads the header without touching the voxel data, so every check here (dimensions,
voxel-count cap, spacing, affine) runs on the header alone; only then is the array read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from transmed.io.atomic import atomic_path

#: Refuse volumes larger than this many voxels per 3D volume (≈ 512³). Configurable per call.
DEFAULT_MAX_VOXELS = 512**3


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

    Checks: 3 dimensions (or 4 when ``allow_4d``), every dimension ≥ 1, voxel count per 3D
    volume ≤ ``max_voxels``, finite positive spacing, a finite non-singular affine.

    Raises:
        NiftiHeaderError: naming the file and the problem.
    """
    path = Path(path)
    img = _proxy(path)
    shape = tuple(int(s) for s in img.shape)
    # Trailing singleton dims (X, Y, Z, 1) are common in converted data; treat them as 3D.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    ndim_ok = len(shape) == 3 or (allow_4d and len(shape) == 4)
    if not ndim_ok:
        want = "3D or 4D" if allow_4d else "3D"
        raise NiftiHeaderError(f"{path}: expected a {want} image, got shape {shape}")
    if min(shape) < 1:
        raise NiftiHeaderError(f"{path}: empty dimension in shape {shape}")
    n_vox = int(np.prod(shape[:3], dtype=np.int64))
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
    return img


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
