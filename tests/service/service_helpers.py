"""Helpers for the service tests: minimal MR data sets, a C-STORE client, configs, fakes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from transmed.service.config import ServiceConfig, config_from_dict
from transmed.service.orthanc import find_dicomweb_plugin, find_orthanc
from transmed.service.outbox import DeliveryError

REQUIRE_ENV = "TRANSMED_REQUIRE_ORTHANC"
PATIENT_NAME = "Zzyzx^Quintavius"  # distinctive: must never appear in a log
PATIENT_ID = "PID-7734-QX"


def mr_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    rows: int = 8,
    cols: int = 8,
    k: int = 0,
) -> Dataset:
    """One small, valid MR Image Storage slice with file meta (Explicit VR LE)."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 AX"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, float(k)]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    ds.InstanceNumber = k + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(rows * cols, dtype=np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def make_config(tmp_path: Path, **overrides: Any) -> ServiceConfig:
    """A test config: free ports, short quiet period and backoff, loopback, dummy model path."""
    data: dict[str, Any] = {
        "ae_title": "TRANSMED",
        "dicom_port": 0,
        "http_port": 0,
        "storage_dir": str(tmp_path / "storage"),
        "model": str(tmp_path / "model.pt"),
        "quiet_period_s": 0.3,
        "queue_size": 2,
        "retry": {"initial_s": 0.1, "max_s": 0.5, "factor": 2.0},
        "destination": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_dict(data)


def store_datasets(
    port: int, datasets: list[Dataset], *, called: str = "TRANSMED", calling: str = "TESTSCU"
) -> list[int]:
    """C-STORE each data set in one association; return the status codes (-1: no response)."""
    from functools import partial

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import EnhancedMRImageStorage

    from transmed.service.scp import tune_socket

    ae = AE(ae_title=calling)
    for sop in (MRImageStorage, EnhancedMRImageStorage, "1.2.840.10008.5.1.4.1.1.2"):
        ae.add_requested_context(sop, [ExplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=called,
        evt_handlers=[(evt.EVT_CONN_OPEN, partial(tune_socket, opening=True))],
    )
    if not assoc.is_established:
        raise ConnectionError("association not established")
    codes = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            codes.append(int(status.Status) if status and "Status" in status else -1)
    finally:
        assoc.release()
    return codes


def store_raw_file(port: int, path: Path, monkeypatch: Any) -> int:
    """C-STORE a file's bytes as they are (pynetdicom's chunked mode: no decoding, no checks
    on the client side), so the node receives whatever the file holds after its file meta."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    try:
        return store_datasets(port, [path])[0]  # type: ignore[list-item]
    finally:
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


@dataclass
class FakeSender:
    """A destination that records deliveries; ``down`` makes every attempt fail."""

    down: bool = False
    permanent: bool = False
    delivered: list[str] = field(default_factory=list)
    attempts: int = 0

    def send(self, path: Path) -> None:
        self.attempts += 1
        if self.down:
            raise DeliveryError("destination down", permanent=self.permanent)
        self.delivered.append(Path(path).stem)

    def describe(self) -> str:
        return "fake destination"


@dataclass
class FakePrediction:
    seg_path: Path
    seg_sop_instance_uid: str
    study_uid: str = ""
    reference_series_uid: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def fake_predict(predictor: Any, study: Path, out_dir: Path, **kwargs: Any) -> FakePrediction:
    """Stands in for ``predict_dicom_study``: checks the folder has instances, writes a file
    named like a SEG."""
    if not any(Path(study).rglob("*.dcm")):
        raise ValueError("no instances")
    uid = generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "seg.dcm"
    path.write_bytes(b"fake seg " + uid.encode())
    return FakePrediction(path, uid)


def require_orthanc() -> None:
    """Skip (or, with TRANSMED_REQUIRE_ORTHANC=1 as in CI, fail) when Orthanc is missing."""
    missing = []
    if find_orthanc() is None:
        missing.append("the Orthanc executable")
    if find_dicomweb_plugin() is None:
        missing.append("its DICOMweb plugin")
    if missing:
        msg = (
            f"{' and '.join(missing)} not found: `make system-deps` (or apt-get install "
            "orthanc orthanc-dicomweb)"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{msg}; {REQUIRE_ENV}=1 requires it", pytrace=False)
        pytest.skip(msg)
