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
   :meth:`DicomSeries.volume` reads the pixels, applies the rescale slope / intercept and
   inverts a MONOCHROME1 series (so higher always means more signal before normalisation).
4. :func:`load_study`: one study, one series per modality, the choice among duplicates recorded.

Voxel order and affine (the SEG writer and the service rely on it): ``Volume.data[i, j, k]``
with i = column index (along ImageOrientationPatient[:3], step PixelSpacing[1]), j = row index
(along IOP[3:], step PixelSpacing[0]), k = slice index in increasing order along the slice
normal IOP[:3] × IOP[3:]; the origin is ImagePositionPatient of slice k = 0; the LPS affine is
turned into RAS+ by diag(-1, -1, 1, 1). So a slice's pixel array ``(rows, columns)`` is
``data[:, :, k].T``. This keeps the scanner's own voxel grid (no resampling, no reorientation):
a SEG frame is exactly a source slice, and preprocessing reorients to RAS where it needs to.

Modules, one per concept (import from this package; the names below are its interface):

- :mod:`.errors`: :class:`DicomError`, :func:`is_valid_uid` and helpers every stage shares.
- :mod:`.scan`: stage 1, :func:`read_header`, :func:`scan_folder`, :class:`ScanResult`.
- :mod:`.rules`: stage 2, :class:`ModalityRule`, :class:`ModalityRules`.
- :mod:`.frames`: :class:`FrameRef`, per-frame geometry and the consistency checks of stage 3.
- :mod:`.series`: stage 3, :class:`DicomSeries` and its pixel reading.
- :mod:`.study`: stage 4, :class:`DicomStudy`, :func:`load_study`.
- :mod:`.seg`: the output side, DICOM SEG writing and reading with highdicom (imported on its
  own, ``from transmed.io.dicom.seg import build_seg``, so readers do not load highdicom).
"""

from transmed.io.dicom.errors import DicomError, is_valid_uid, study_log_key
from transmed.io.dicom.frames import FrameRef
from transmed.io.dicom.rules import ModalityRule, ModalityRules, has_contrast_agent, series_text
from transmed.io.dicom.scan import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    ENHANCED_MR_IMAGE_STORAGE,
    LEGACY_ENHANCED_MR_IMAGE_STORAGE,
    MAX_SEQUENCE_DEPTH,
    MR_IMAGE_STORAGE,
    MR_SOP_CLASSES,
    ScanResult,
    SkippedFile,
    read_header,
    scan_folder,
)
from transmed.io.dicom.series import LPS_TO_RAS, DicomSeries
from transmed.io.dicom.study import DicomStudy, SeriesChoice, load_study

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_FILE_BYTES",
    "ENHANCED_MR_IMAGE_STORAGE",
    "LEGACY_ENHANCED_MR_IMAGE_STORAGE",
    "LPS_TO_RAS",
    "MAX_SEQUENCE_DEPTH",
    "MR_IMAGE_STORAGE",
    "MR_SOP_CLASSES",
    "DicomError",
    "DicomSeries",
    "DicomStudy",
    "FrameRef",
    "ModalityRule",
    "ModalityRules",
    "ScanResult",
    "SeriesChoice",
    "SkippedFile",
    "has_contrast_agent",
    "is_valid_uid",
    "study_log_key",
    "load_study",
    "read_header",
    "scan_folder",
    "series_text",
]
