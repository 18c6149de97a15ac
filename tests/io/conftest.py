"""Fixtures for the DICOM tests: a synthetic study, editable copies, real enhanced MR files."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from transmed.data.synth.dicom import SyntheticStudy, write_dicom_study

#: Distinctive identifiers: tests assert they never reach a log line or an error message.
PATIENT_NAME = "Zyxwvut^Qponmlk"
PATIENT_ID = "PID-98765-XQZ"
SHAPE = (32, 32, 24)
SPACING = (1.2, 1.1, 2.0)


@pytest.fixture(scope="session")
def synth_study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    """An axial 4-series synthetic study (32 × 32 × 24), written once per session; read-only."""
    return write_dicom_study(
        tmp_path_factory.mktemp("synth") / "study", shape=SHAPE, spacing=SPACING,
        patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
    )  # fmt: skip


@pytest.fixture
def study_copy(synth_study: SyntheticStudy, tmp_path: Path) -> Callable[..., tuple[Path, dict]]:
    """``study_copy(modalities=None) -> (folder, files)``: a private copy to edit.

    ``files[modality]`` lists the copied files in slice order.
    """

    def make(modalities: Sequence[str] | None = None) -> tuple[Path, dict[str, list[Path]]]:
        root = Path(next(iter(synth_study.files.values()))[0]).parents[1]
        dest = tmp_path / "copy"
        files: dict[str, list[Path]] = {}
        for modality, paths in synth_study.files.items():
            if modalities is not None and modality not in modalities:
                continue
            files[modality] = []
            for p in paths:
                target = dest / p.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, target)
                files[modality].append(target)
        return dest, files

    return make


def make_enhanced_mr(
    path: Path,
    *,
    order: Sequence[int] | None = None,
    source: str = "emri_small.dcm",
    spacing: float = 1.2,
    tilt_deg: float = 20.0,
    slope: float = 2.0,
    intercept: float = -5.0,
) -> tuple[Dataset, dict[str, np.ndarray]]:
    """pydicom-data's real enhanced MR (10 frames of 64 × 64) with functional groups added.

    The real file carries no per-frame geometry, so plane position / orientation, pixel
    measures and a rescale are added: frame f shows slice ``order[f]`` of a stack tilted
    ``tilt_deg`` about the LPS z axis (frames deliberately not in slice order).

    Returns:
        the written dataset, and ``{"row", "col", "normal", "origin"}`` (LPS) of the stack.
    """
    ds = pydicom.dcmread(get_testdata_file(source))
    n = int(ds.NumberOfFrames)
    theta = np.deg2rad(tilt_deg)
    row = np.array([np.cos(theta), np.sin(theta), 0.0])
    col = np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)
    origin = np.array([-30.0, 10.0, 40.0])
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
    measures.PixelSpacing = [0.9, 0.8]
    measures.SliceThickness = spacing
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = (
        slope,
        intercept,
        "US",
    )
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    order = list(range(n)) if order is None else list(order)
    per_frame = []
    for f in range(n):
        position, content, item = Dataset(), Dataset(), Dataset()
        xyz = origin + order[f] * spacing * normal
        position.ImagePositionPatient = [round(float(v), 6) for v in xyz]
        content.StackID, content.InStackPositionNumber = "1", order[f] + 1
        item.PlanePositionSequence = DicomSequence([position])
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.SeriesDescription = "T1 3D TFE SAG"
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds, {"row": row, "col": col, "normal": normal, "origin": origin}


def small_mr_series(
    folder: Path,
    *,
    source: str = "MR_small.dcm",
    n: int = 3,
    orientation: Sequence[float] | None = None,
    roll: int = 0,
) -> list[Path]:
    """``n`` slices built from a real single-frame MR file (positions along its normal).

    Args:
        orientation: an ImageOrientationPatient to declare instead of the file's own (the
            pixels stay the real ones, the plane becomes e.g. sagittal or coronal).
        roll: slice k's pixels are the real ones rolled by ``k * roll`` columns, so that every
            slice differs and a reader that stacks them in the wrong order is caught.

    Returns:
        the written files in slice order (their names are not in that order).
    """
    base = pydicom.dcmread(get_testdata_file(source))
    iop = np.asarray(orientation if orientation is not None else base.ImageOrientationPatient,
                     dtype=float)  # fmt: skip
    normal = np.cross(iop[:3], iop[3:])
    series_uid = generate_uid()
    paths = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file(source))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if orientation is not None:
            ds.ImageOrientationPatient = [round(float(v), 6) for v in iop]
        if roll:
            ds.PixelData = np.roll(ds.pixel_array, k * roll, axis=1).tobytes()
        xyz = np.asarray(base.ImagePositionPatient, dtype=float) + 2.5 * k * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in xyz]
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        path = folder / f"slice{(k * 7) % n}_{k}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def nested_sequence_bytes(depth: int) -> bytes:
    """An Explicit VR LE ContentSequence (0040,A730) nested ``depth`` levels, undefined lengths.

    Built as raw bytes: pydicom's own writer recurses per level and could not write it.
    """
    open_level = (
        b"\x40\x00\x30\xa7" + b"SQ\x00\x00" + b"\xff\xff\xff\xff"  # SQ, undefined length
        + b"\xfe\xff\x00\xe0" + b"\xff\xff\xff\xff"  # item, undefined length
    )  # fmt: skip
    close_level = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return open_level * depth + close_level * depth


def insert_before_pixel_data(path: Path, blob: bytes) -> None:
    """Insert raw element bytes just before (7FE0,0010) of an Explicit VR LE file."""
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00OW")
    if at < 0:
        raise ValueError(f"{path}: no OW PixelData element found")
    path.write_bytes(data[:at] + blob + data[at:])


@pytest.fixture(scope="session")
def dcm() -> SimpleNamespace:
    """The helpers above for test modules (conftest modules are not importable by name)."""
    return SimpleNamespace(
        make_enhanced_mr=make_enhanced_mr, small_mr_series=small_mr_series,
        nested_sequence_bytes=nested_sequence_bytes,
        insert_before_pixel_data=insert_before_pixel_data,
        PATIENT_NAME=PATIENT_NAME, PATIENT_ID=PATIENT_ID, SHAPE=SHAPE, SPACING=SPACING,
    )  # fmt: skip
