"""Readers and writers (NIfTI, DICOM), orientation and header validation."""

from transmed.io.nifti import (
    DEFAULT_MAX_VOXELS,
    NiftiHeaderError,
    Volume,
    check_nifti_header,
    load_volume,
    save_volume,
)

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "NiftiHeaderError",
    "Volume",
    "check_nifti_header",
    "load_volume",
    "save_volume",
]
