"""Bad input over real C-STORE associations: the right status or a failure recorded for the
study, a clear log line, the node keeps serving, no partial files, no patient identifiers logged.
"""

from __future__ import annotations

import logging
import shutil
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from service_helpers import (
    PATIENT_ID,
    PATIENT_NAME,
    FakeSender,
    make_config,
    mr_dataset,
    store_datasets,
    store_raw_file,
    wait_until,
)

from transmed.service.service import DicomNode
from transmed.service.validation import Status

SHAPE = (32, 32, 24)
IDENTIFIERS = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID)


@pytest.fixture
def node(tmp_path, tiny_predictor, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = make_config(tmp_path, limits={"max_voxels": 100_000}, quiet_period_s=0.3)
    sender = FakeSender()
    with DicomNode(cfg, predictor=tiny_predictor, sender=sender) as n:
        n.fake_sender = sender  # type: ignore[attr-defined]
        yield n
    _assert_clean(n, caplog)


def _assert_clean(node: DicomNode, caplog) -> None:
    """What every bad input must leave: no temp files, no identifiers in the logs."""
    storage = node.config.storage_dir
    assert not list(storage.rglob(".*.tmp")), "a partial file was left behind"
    for secret in IDENTIFIERS:
        assert secret not in caplog.text, "a patient identifier reached the logs"


def _file_bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _meta_only(ds: Dataset) -> bytes:
    buf = BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, ds.file_meta)
    return buf.getvalue()


def _nested(depth: int) -> Dataset:
    ds = mr_dataset()
    item = ds
    for _ in range(depth):
        child = Dataset()
        child.ReferencedSOPInstanceUID = generate_uid()
        item.ReferencedImageSequence = Sequence([child])
        item = child
    return ds


def _raw(build):
    """Mark a case whose bytes are sent as they are (not re-encoded by pynetdicom)."""
    build.raw = True
    return build


@_raw
def non_dicom(ds: Dataset) -> bytes:
    return _meta_only(ds) + b"This is a text file, not a DICOM data set.\n" * 40


@_raw
def truncated(ds: Dataset) -> bytes:
    data = _file_bytes(ds)
    return data[: len(data) - 700]  # cut inside the pixel data


@_raw
def not_mr(ds: Dataset) -> bytes:  # file meta (the presentation context) says MR, data set CT
    head = _meta_only(ds)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    del ds.file_meta
    buf = BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True)
    return head + buf.getvalue()


def missing_pixel_data(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds


def short_pixel_data(ds: Dataset) -> Dataset:
    ds.PixelData = ds.PixelData[:200]
    return ds


def beyond_voxel_cap(ds: Dataset) -> Dataset:
    ds.Rows = ds.Columns = 4096  # 16.7 M voxels claimed, cap 100 000
    return ds


def deeply_nested(ds: Dataset) -> Dataset:
    return _nested(40)


def path_in_uid(ds: Dataset) -> Dataset:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "../../../etc/passwd"
    return ds


@pytest.mark.parametrize(
    ("build", "status"),
    [
        (non_dicom, Status.CANNOT_DECODE),
        (truncated, Status.CANNOT_DECODE),
        (not_mr, Status.SOP_CLASS_MISMATCH),
        (missing_pixel_data, Status.MISSING_PIXEL_DATA),
        (short_pixel_data, Status.SHORT_PIXEL_DATA),
        (beyond_voxel_cap, Status.VOXEL_CAP),
        (deeply_nested, Status.NESTING_TOO_DEEP),
        (path_in_uid, Status.UNSAFE_UID),
    ],
    ids=lambda v: getattr(v, "__name__", None) or f"0x{v:04X}",
)
def test_bad_instance_is_refused_with_its_status(
    node, tmp_path, monkeypatch, caplog, build, status
):
    ds = mr_dataset(rows=32, cols=32)
    if getattr(build, "raw", False):
        path = tmp_path / "bad.dcm"
        path.write_bytes(build(ds))
        code = store_raw_file(node.dicom_port, path, monkeypatch)
    else:
        (code,) = store_datasets(node.dicom_port, [build(ds)])
    assert code == status
    assert f"refused with 0x{status:04X}" in caplog.text  # one clear line, with the status
    assert not [p for p in (node.config.storage_dir / "incoming").rglob("*") if p.is_file()]
    # the node goes on: a good instance right after is stored
    assert store_datasets(node.dicom_port, [mr_dataset()]) == [Status.SUCCESS]
    assert node.health()[0]


def test_unknown_calling_ae_is_refused(tmp_path, caplog):
    cfg = make_config(tmp_path, allowed_calling_aets=["ORTHANC"])
    with DicomNode(cfg, predictor=object(), sender=FakeSender()) as n:
        with pytest.raises(ConnectionError):
            store_datasets(n.dicom_port, [mr_dataset()], calling="INTRUDER")
        with pytest.raises(ConnectionError):
            store_datasets(n.dicom_port, [mr_dataset()], calling="ORTHANC", called="WRONG")
        assert store_datasets(n.dicom_port, [mr_dataset()], calling="ORTHANC") == [0]
    assert "'INTRUDER'" in caplog.text and "not allowed" in caplog.text


# --- study-level problems: every instance is accepted, the study fails and says why ---------


def _study(folder: Path, **kwargs):
    from transmed.data.synth.dicom import write_dicom_study

    return write_dicom_study(
        folder,
        shape=SHAPE,
        spacing=(1.5, 1.5, 2.0),
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        **kwargs,
    )


def _rewrite(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def missing_slice(study) -> None:
    study.files["t2"][SHAPE[2] // 2].unlink()


def duplicate_slice(study) -> None:
    src = study.files["t1ce"][5]
    dup = src.with_name("DUP.dcm")
    shutil.copy(src, dup)

    def new_uid(ds):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()

    _rewrite(dup, new_uid)


def mixed_orientations(study) -> None:
    def tilt(ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # one coronal slice in an axial series

    _rewrite(study.files["flair"][7], tilt)


def missing_modality(study) -> None:
    for path in study.files["flair"]:
        path.unlink()


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (missing_slice, "missing slice"),
        (duplicate_slice, "duplicate slice"),
        (mixed_orientations, "ImageOrientationPatient"),
        (missing_modality, "no series for modality flair"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_bad_study_fails_with_a_recorded_reason(node, tmp_path, caplog, spoil, reason):
    study = _study(tmp_path / "study")
    spoil(study)
    files = sorted((tmp_path / "study").rglob("*.dcm"))
    assert set(store_datasets(node.dicom_port, files)) == {Status.SUCCESS}
    record = wait_until(
        lambda: next((r for r in node.jobs.all() if r.state in ("done", "failed")), None),
        timeout=60,
    )
    assert record.state == "failed"
    assert "DicomError" in record.reason and reason in record.reason
    # the log line names the job; the worker writes it just after the record (a busy machine
    # can run this check in between)
    assert wait_until(lambda: f"job {record.job_id} failed" in caplog.text, timeout=10)
    wait_until(lambda: not node.jobs.input_dir(record.job_id).exists())  # images deleted
    assert node.fake_sender.delivered == [] and node.outbox.items() == []
    assert node.metrics.counters["studies_failed"] == 1 and node.health()[0]
    wait_until(lambda: node.budget.used == 0)  # released right after the clean-up


def test_a_good_study_after_bad_ones_still_goes_through(node, tmp_path):
    bad = _study(tmp_path / "bad")
    missing_modality(bad)
    good = _study(tmp_path / "good", seed=3)
    store_datasets(node.dicom_port, sorted((tmp_path / "bad").rglob("*.dcm")))
    store_datasets(node.dicom_port, [mr_dataset(rows=32, cols=32, sop_uid="1.2/../x")])
    store_datasets(node.dicom_port, sorted((tmp_path / "good").rglob("*.dcm")))
    wait_until(lambda: node.fake_sender.delivered, timeout=60)

    def states():
        return sorted((r.study_uid == good.study_uid, r.state) for r in node.jobs.all())

    wait_until(lambda: states() == [(False, "failed"), (True, "done")])
