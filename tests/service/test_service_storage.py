"""Storage: names from the network never escape the storage directory; caps give statuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from service_helpers import (
    FakeSender,
    fake_predict,
    make_config,
    mr_dataset,
    store_datasets,
    wait_until,
)

from transmed.service.config import LimitsConfig
from transmed.service.keys import UnsafeName, is_valid_uid, safe_join, uid_key
from transmed.service.service import DicomNode
from transmed.service.storage import DiskBudget, IncomingStore
from transmed.service.validation import InstanceRefused, Status

HOSTILE_UIDS = [
    "../../etc/passwd",
    "1.2/../x",
    "1.2.3/..",
    "..",
    "/etc/passwd",
    "1.2.3\x00.4",
    "1.2.3\n2026 INFO forged log line",
    "1." * 40 + "1",  # 81 characters
    "",
    "1..2",
    "1.2.",
    "C:\\windows",
]


@pytest.mark.parametrize("value", HOSTILE_UIDS)
def test_uid_key_refuses_anything_but_a_uid(value):
    assert not is_valid_uid(value)
    with pytest.raises(UnsafeName) as err:
        uid_key(value)
    assert value not in str(err.value) or value == ""  # the value is never echoed


@pytest.mark.parametrize("value", ["1", "1.2.840.10008.5.1.4.1.1.4", "2.25." + "9" * 59])
def test_uid_key_accepts_uids(value):
    assert uid_key(value) == value


def test_safe_join_refuses_escapes_and_symlinks(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert safe_join(root, "1.2", "3.dcm") == root / "1.2" / "3.dcm"
    for parts in (("..", "x"), ("a/../../x",), ("",), (".",)):
        with pytest.raises(UnsafeName):
            safe_join(root, *parts)
    (root / "link").symlink_to(tmp_path)  # a planted link leading out of the root
    with pytest.raises(UnsafeName, match="outside"):
        safe_join(root, "link", "x")


def _files_outside(tmp_path: Path, storage: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and storage not in p.parents]


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize("value", ["../../etc/passwd", "1.2/../x", "../../../" + "a" * 30])
def test_store_refuses_path_characters_in_uids(tmp_path, keyword, value):
    storage = tmp_path / "storage"
    store = IncomingStore(storage, LimitsConfig(), DiskBudget(10**9))
    ds = mr_dataset()
    setattr(ds, keyword, value)
    with pytest.raises(InstanceRefused) as err:
        store.put(ds, b"x" * 100)
    assert err.value.status == Status.UNSAFE_UID
    assert not any(p.is_file() for p in storage.rglob("*"))
    assert _files_outside(tmp_path, storage) == []


def _node(tmp_path, sender=None, **overrides):
    cfg = make_config(tmp_path, **overrides)
    return DicomNode(
        cfg, predictor=object(), sender=sender or FakeSender(), predict_fn=fake_predict
    )


@pytest.mark.parametrize("value", ["../../etc/passwd", "1.2/../x", "..", "1.2.3/../../x"])
def test_c_store_with_path_characters_is_refused_and_writes_nothing(tmp_path, value):
    storage = tmp_path / "storage"
    with _node(tmp_path) as node:
        ok = mr_dataset()
        bad = mr_dataset(sop_uid=value)
        codes = store_datasets(node.dicom_port, [bad, ok])
        assert codes == [Status.UNSAFE_UID, Status.SUCCESS]  # the association goes on
        stored = [p for p in (storage / "incoming").rglob("*") if p.is_file()]
        assert [p.stem for p in stored] == [str(ok.SOPInstanceUID)]
        assert node.metrics.counters["instances_refused"] == 1
    assert _files_outside(tmp_path, storage) == []
    assert not any(".." in p.name or p.name == "passwd" for p in tmp_path.rglob("*"))


def test_layout_is_study_series_instance(tmp_path):
    with _node(tmp_path, quiet_period_s=60) as node:
        ds = mr_dataset()
        assert store_datasets(node.dicom_port, [ds, ds]) == [0, 0]  # a re-send replaces
        path = (
            tmp_path
            / "storage/incoming"
            / ds.StudyInstanceUID
            / ds.SeriesInstanceUID
            / f"{ds.SOPInstanceUID}.dcm"
        )
        assert path.is_file()
        assert node.budget.used == path.stat().st_size  # counted once
        assert not list((tmp_path / "storage").rglob(".*.tmp"))


def test_study_cap_refuses_the_rest_and_fails_the_study(tmp_path):
    sender = FakeSender()
    with _node(tmp_path, sender, limits={"max_study_instances": 2}) as node:
        study, series = generate_uid(), generate_uid()
        sets = [mr_dataset(study_uid=study, series_uid=series, k=k) for k in range(4)]
        codes = store_datasets(node.dicom_port, sets)
        assert codes == [0, 0, Status.STUDY_CAP, Status.STUDY_CAP]
        record = wait_until(lambda: next((r for r in node.jobs.all() if r.state == "failed"), None))
        assert "max_study_instances" in record.reason
        wait_until(lambda: not node.jobs.input_dir(record.job_id).exists())  # images deleted
        assert sender.delivered == []
        wait_until(lambda: node.budget.used == 0)


def test_storage_cap_answers_out_of_resources(tmp_path):
    with _node(tmp_path, quiet_period_s=60, limits={"max_storage_bytes": 1500}) as node:
        codes = store_datasets(node.dicom_port, [mr_dataset(), mr_dataset(), mr_dataset()])
        assert codes[0] == 0 and Status.OUT_OF_RESOURCES in codes
        assert node.budget.used <= 1500


def test_instance_size_cap(tmp_path):
    with _node(tmp_path, limits={"max_instance_bytes": 2048}) as node:
        codes = store_datasets(node.dicom_port, [mr_dataset(rows=64, cols=64)])
        assert codes == [Status.INSTANCE_TOO_LARGE]
        assert not [p for p in (tmp_path / "storage").rglob("*.dcm")]


def test_storage_dir_is_private(tmp_path):
    with _node(tmp_path):
        assert os.stat(tmp_path / "storage").st_mode & 0o077 == 0
