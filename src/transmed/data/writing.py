"""Write a predicted segmentation back in a dataset layout's own label values and file naming."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transmed.data.cases import LAYOUTS
from transmed.data.labels import LabelConvention, from_internal
from transmed.io.nifti import save_volume


def prediction_path(out_dir: str | Path, case_id: str, file_ending: str = ".nii.gz") -> Path:
    """``out_dir / f"{case_id}{file_ending}"``, the name every supported layout's tools expect.

    BraTS 2021/2023 challenge submissions are ``<case_id>.nii.gz``; MSD and nnU-Net predictions
    are ``<case>.nii.gz`` (nnU-Net: its dataset.json ``file_ending``).

    Raises:
        ValueError: for a case id that is empty, hidden or contains a path separator.
    """
    if not case_id or case_id.startswith(".") or any(c in case_id for c in "/\\\0"):
        raise ValueError(f"case_id {case_id!r}: not usable as a file name")
    if file_ending not in (".nii.gz", ".nii"):
        raise ValueError(f"file_ending {file_ending!r}: expected '.nii.gz' or '.nii'")
    return Path(out_dir) / f"{case_id}{file_ending}"


def write_prediction(
    internal_labels: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    case_id: str,
    layout: str,
    *,
    convention: LabelConvention | None = None,
    file_ending: str = ".nii.gz",
) -> Path:
    """Write internal labels ``(X, Y, Z)`` {0..3} as ``layout``'s label file, atomically.

    Args:
        internal_labels: ``(X, Y, Z)`` internal labels on the grid given by ``affine``.
        affine: ``(4, 4)`` voxel -> RAS mm of that grid (normally the case's original grid).
        layout: one of :data:`~transmed.data.cases.LAYOUTS`; picks the label values (BraTS
            2021 writes ET as 4, BraTS 2023 as 3, MSD/nnU-Net oedema as 1 ...).
        convention: overrides the layout's default (pass ``case.convention`` for an nnU-Net
            dataset whose dataset.json defines its own labels).

    Returns:
        The written path, ``out_dir / f"{case_id}{file_ending}"`` (uint8 NIfTI).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")
    labels = np.asarray(internal_labels)
    if labels.ndim != 3:
        raise ValueError(f"internal_labels: expected a 3D (X, Y, Z) map, got shape {labels.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine: expected a finite (4, 4) matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("affine: singular (zero volume per voxel)")
    path = prediction_path(out_dir, case_id, file_ending)
    values = from_internal(labels, convention or layout)
    return save_volume(values.astype(np.uint8), affine, path)
