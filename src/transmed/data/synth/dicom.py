"""A synthetic MR study written as classic DICOM files, with its ground truth, for tests and demos.

``write_dicom_study(out_dir)`` turns one synthetic case (:func:`generate_case`: deformed MNI
anatomy, tumours, four contrasts) into four series of single-frame MR Image Storage files
(one file per slice, Explicit VR Little Endian), the way a scanner export looks: one folder per
series, file names in random order (not slice order), one StudyInstanceUID and one
FrameOfReferenceUID shared by the series, scanner-like SeriesDescription / ProtocolName per
contrast.

Geometry. The synthetic arrays are ``(X, Y, Z)`` with voxel axes pointing to patient left,
posterior and superior (the BraTS / DICOM-axial directions); the declared ``spacing`` (mm) is
used as is, so the anatomy is drawn on whatever millimetre grid the caller asks for. For a
non-axial ``orientation`` the voxel axes are permuted and flipped (nibabel's orientation
tools) so that the slices become sagittal or coronal; every header field (IOP, IPP,
PixelSpacing) is then derived from that voxel → world affine, and the returned label map lies
on exactly the grid :mod:`transmed.io.dicom` reads back for the t1ce series:
``data[i, j, k]``, i along the row direction (IOP[:3]), j along the column direction (IOP[3:]),
k along row × column; RAS affine = diag(-1, -1, 1, 1) @ LPS affine.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from transmed.data.labels import MODALITIES, to_internal
from transmed.data.synth.case import generate_case
from transmed.io.atomic import atomic_write
from transmed.io.nifti import Volume

#: RAS <-> LPS: DICOM patient coordinates are LPS, TransMed affines are RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Voxel axis directions (nibabel axis codes, RAS letters = direction of increasing index) of
#: each orientation. Each triple is right-handed in LPS, i.e. the third axis is row × column
#: (a DICOM reader sorting slices along the normal returns them in this order).
ORIENTATIONS: dict[str, tuple[str, str, str]] = {
    "axial": ("L", "P", "S"),  # rows run left, columns posterior, slices foot -> head
    "sagittal": ("P", "I", "R"),  # rows run posterior, columns downward, slices left -> right
    "coronal": ("L", "I", "P"),  # rows run left, columns downward, slices front -> back
}

_PLANE_WORD = {"axial": "AX", "sagittal": "SAG", "coronal": "COR"}
_PLANE_SIEMENS = {"axial": "tra", "sagittal": "sag", "coronal": "cor"}


@dataclass(frozen=True)
class _Protocol:
    """Scanner-like acquisition parameters of one contrast (times in ms)."""

    description: str  # SeriesDescription template; {plane} = AX / SAG / COR
    protocol: str  # ProtocolName template; {plane} = tra / sag / cor
    scanning_sequence: str
    sequence_variant: str
    sequence_name: str
    repetition_time: float
    echo_time: float
    inversion_time: float | None = None
    contrast_agent: str | None = None


_PROTOCOLS: dict[str, _Protocol] = {
    "t1": _Protocol("T1 {plane}", "t1_se_{plane}", "SE", "SP", "*se2d1", 550.0, 9.0),
    "t1ce": _Protocol(
        "T1 POST GD {plane}",
        "t1_se_{plane}_post_gd",
        "SE",
        "SP",
        "*se2d1",
        550.0,
        9.0,
        contrast_agent="GADOBUTROL",
    ),
    "t2": _Protocol("T2 {plane}", "t2_tse_{plane}", "SE", "SK", "*tse2d1_15", 5000.0, 95.0),
    "flair": _Protocol(
        "FLAIR {plane}",
        "t2_tirm_{plane}_dark-fluid",
        "SE\\IR",
        "SK\\SP\\MP",
        "*tir2d1_16",
        9000.0,
        81.0,
        inversion_time=2500.0,
    ),
}


@dataclass
class SyntheticStudy:
    """What :func:`write_dicom_study` wrote.

    Attributes:
        study_uid: StudyInstanceUID shared by all series.
        series_uids: modality -> SeriesInstanceUID.
        files: modality -> the written files, in slice order (k = 0, 1, ...).
        label: internal labels 0-3 (uint8) on the t1ce series' grid, ``data[i, j, k]`` in the
            voxel order and RAS affine that :mod:`transmed.io.dicom` produces for that series.
        patient_id: PatientID written into every file.
        frame_of_reference_uid: FrameOfReferenceUID shared by all series.
    """

    study_uid: str
    series_uids: dict[str, str]
    files: dict[str, list[Path]]
    label: Volume
    patient_id: str
    frame_of_reference_uid: str = ""
    images: dict[str, Volume] = field(default_factory=dict)  # stored values, same grid


def _reorient(
    data: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip ``data`` (X, Y, Z) so its voxel axes point along ``axcodes``; new affine."""
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(axcodes)
    )
    out = nib.orientations.apply_orientation(data, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    return np.ascontiguousarray(out), new_affine


def _base_dataset(
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    frame_uid: str,
    when: _dt.datetime,
) -> Dataset:
    """Patient, study and equipment attributes shared by every file of the study."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "055Y"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = "SYNTH0001"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MR BRAIN WITH AND WITHOUT CONTRAST"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Modality = "MR"
    ds.Manufacturer = "TransMed synthetic"
    ds.ManufacturerModelName = "synth"
    ds.SoftwareVersions = "transmed"
    ds.MagneticFieldStrength = 3.0
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    ds.SOPClassUID = MRImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.MRAcquisitionType = "2D"
    ds.ScanOptions = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    ds.RescaleType = "US"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    return ds


def _series_headers(
    ds: Dataset,
    modality: str,
    *,
    series_uid: str,
    series_number: int,
    orientation: str,
    lps: np.ndarray,
    shape: tuple[int, int, int],
    stored: np.ndarray,
) -> None:
    """Series-level attributes (description, sequence, geometry) on the shared dataset."""
    proto = _PROTOCOLS[modality]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.SeriesDescription = proto.description.format(plane=_PLANE_WORD[orientation])
    ds.ProtocolName = proto.protocol.format(plane=_PLANE_SIEMENS[orientation])
    ds.ScanningSequence = proto.scanning_sequence.split("\\")
    ds.SequenceVariant = proto.sequence_variant.split("\\")
    ds.SequenceName = proto.sequence_name
    ds.RepetitionTime = proto.repetition_time
    ds.EchoTime = proto.echo_time
    if proto.inversion_time is not None:
        ds.InversionTime = proto.inversion_time
    elif "InversionTime" in ds:
        del ds.InversionTime
    if proto.contrast_agent is not None:
        ds.ContrastBolusAgent = proto.contrast_agent
    elif "ContrastBolusAgent" in ds:
        del ds.ContrastBolusAgent
    steps = np.linalg.norm(lps[:3, :3], axis=0)  # mm per index along i, j, k
    row_dir, col_dir = lps[:3, 0] / steps[0], lps[:3, 1] / steps[1]
    ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
    ds.PixelSpacing = [round(float(steps[1]), 6), round(float(steps[0]), 6)]  # [row, column]
    ds.SliceThickness = round(float(steps[2]), 6)
    ds.SpacingBetweenSlices = round(float(steps[2]), 6)
    ds.Columns, ds.Rows = int(shape[0]), int(shape[1])
    top = int(stored.max()) if stored.size else 0
    ds.WindowCenter = max(top // 2, 1)
    ds.WindowWidth = max(top, 2)


def _write_file(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    atomic_write(path, lambda fh: ds.save_as(fh, enforce_file_format=True), suffix=".dcm")


def write_dicom_study(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (48, 48, 32),
    seed: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.5),
    patient_id: str = "SYNTH-0001",
    patient_name: str = "Synthetic^Patient",
    study_uid: str | None = None,
    modalities: tuple[str, ...] = ("t1", "t1ce", "t2", "flair"),
    orientation: str = "axial",
) -> SyntheticStudy:
    """Write a synthetic 4-contrast MR study as single-frame DICOM files under ``out_dir``.

    Layout: ``out_dir/S<series number>/IM<random 4 digits>.dcm`` (names not in slice order).
    The anatomy and tumour come from ``generate_case(seed, 0, shape)``; the first call in a
    process also derives the MNI template (~2.5 s); later calls take ~0.5 s for 48 × 48 × 32
    (128 files, each fsynced; ~1 s on a busy 2-core machine).

    Args:
        out_dir: destination folder (created).
        shape: (X, Y, Z) voxels of the synthetic grid before reorientation; sides in [16, 512].
        seed: synthetic case seed (anatomy, tumour, intensities). UIDs are always fresh.
        spacing: (X, Y, Z) voxel size in mm of the synthetic grid.
        patient_id, patient_name: written into every file.
        study_uid: StudyInstanceUID to use; a new one when ``None``.
        modalities: which contrasts to write (a subset of t1, t1ce, t2, flair).
        orientation: ``"axial"``, ``"sagittal"`` or ``"coronal"`` slices.

    Returns:
        :class:`SyntheticStudy` with UIDs, files in slice order and the t1ce-grid label map.

    Raises:
        ValueError: unknown modality or orientation, bad spacing or shape.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {sorted(ORIENTATIONS)}, got {orientation!r}")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be distinct names from {MODALITIES}, got {modalities}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive mm values, got {spacing}")
    case = generate_case(seed, 0, tuple(int(s) for s in shape))  # type: ignore[arg-type]
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)

    # Canonical synthetic grid: axes L, P, S (like the generator's), centred near the origin.
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(case.seg.shape) - 1) / 2.0)
    affine[:3, 3] += (0.0, -18.0, 8.0)  # the generator's grid centre (MNI mm)
    label, new_affine = _reorient(
        to_internal(case.seg, "brats2021"), affine, ORIENTATIONS[orientation]
    )
    lps = LPS_TO_RAS @ new_affine  # the same matrix maps RAS -> LPS
    grid = label.shape
    unit = lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)
    normal = np.cross(unit[:, 0], unit[:, 1])  # slice normal, LPS

    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    base = _base_dataset(
        patient_id=patient_id, patient_name=patient_name, study_uid=study_uid,
        frame_uid=frame_uid, when=_dt.datetime(2024, 1, 15, 9, 30, 0),
    )  # fmt: skip
    series_uids: dict[str, str] = {}
    files: dict[str, list[Path]] = {}
    images: dict[str, Volume] = {}
    for number, modality in enumerate(modalities, start=1):
        stored, _ = _reorient(case.images[modality], affine, ORIENTATIONS[orientation])
        stored = np.clip(stored, 0, 65535).astype(np.uint16)  # (i, j, k)
        images[modality] = Volume(stored, new_affine.copy())
        series_uids[modality] = generate_uid()
        _series_headers(
            base, modality, series_uid=series_uids[modality], series_number=number,
            orientation=orientation, lps=lps, shape=grid, stored=stored,
        )  # fmt: skip
        folder = out_dir / f"S{number:04d}"
        names = rng.permutation(grid[2]) + 1  # shuffled: file name order != slice order
        files[modality] = []
        for k in range(grid[2]):
            position = lps @ np.array([0.0, 0.0, float(k), 1.0])
            base.SOPInstanceUID = generate_uid()
            base.InstanceNumber = k + 1
            base.ImagePositionPatient = [round(float(v), 6) for v in position[:3]]
            base.SliceLocation = round(float(position[:3] @ normal), 6)
            base.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, cols)
            path = folder / f"IM{int(names[k]):04d}.dcm"
            _write_file(base, path)
            files[modality].append(path)
    ref = "t1ce" if "t1ce" in modalities else modalities[0]
    label_volume = Volume(label.astype(np.uint8), images[ref].affine.copy())
    return SyntheticStudy(
        study_uid=study_uid, series_uids=series_uids, files=files, label=label_volume,
        patient_id=patient_id, frame_of_reference_uid=frame_uid, images=images,
    )  # fmt: skip
