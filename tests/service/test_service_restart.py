"""A restart mid-study loses nothing (issue 15, item 4): the quiet period restarts when the
listener accepts again, resent instances join the recovered study, and a failed study's
instances are quarantined with the reason, never deleted unrecorded."""

from __future__ import annotations

import logging
import time

from pydicom.uid import generate_uid
from service_helpers import (
    FakeSender,
    fake_predict,
    make_config,
    mr_dataset,
    store_datasets,
    wait_until,
)

from transmed.service import service as service_module
from transmed.service.config import LimitsConfig
from transmed.service.jobs import JobRecord, JobStore
from transmed.service.service import DicomNode
from transmed.service.storage import DiskBudget, IncomingStore


def _partial_study(storage, n_first: int, n_total: int):
    """What a kill -9 mid-study leaves: the first ``n_first`` of ``n_total`` instances."""
    study, series = generate_uid(), generate_uid()
    datasets = [mr_dataset(study_uid=study, series_uid=series, k=k) for k in range(n_total)]
    store = IncomingStore(storage, LimitsConfig(), DiskBudget(10**9))
    for ds in datasets[:n_first]:
        store.put(ds, b"DICM" + bytes(300))
    return study, datasets


def test_resent_instances_join_the_recovered_study(tmp_path):
    study, datasets = _partial_study(tmp_path, 2, 5)
    budget = DiskBudget(10**9)
    store = IncomingStore(tmp_path, LimitsConfig(), budget)
    assert store.recover() == [study]
    for ds in datasets[1:]:  # the sender resends from the first unacknowledged one
        store.put(ds, b"DICM" + bytes(300))
    sealed = store.seal(study, tmp_path / "job" / "input")
    assert sealed is not None and sealed.instances == 5
    assert sealed.bytes == 5 * 304 == budget.used  # what is released matches what was held


def test_quiet_period_starts_when_the_listener_accepts(tmp_path, monkeypatch):
    """The model takes longer to load than the quiet period: the recovered study must wait for
    its sender, not be sealed the moment the node is up."""
    cfg = make_config(tmp_path, quiet_period_s=3.0)  # margin for a loaded machine
    study, datasets = _partial_study(cfg.storage_dir, 2, 4)

    def slow_load(config):
        time.sleep(3.5)
        return object()

    monkeypatch.setattr(service_module, "load_predictor", slow_load)
    sender = FakeSender()
    with DicomNode(cfg, sender=sender, predict_fn=fake_predict, tick_s=0.05) as node:
        time.sleep(0.1)  # the sender reconnects a moment after the node is back
        assert store_datasets(node.dicom_port, datasets[2:]) == [0, 0]
        wait_until(lambda: len(sender.delivered) >= 1)
        time.sleep(3.5)  # a second job would be sealed by now
        jobs = node.jobs.all()
        assert [(j.state, j.instances) for j in jobs] == [("done", 4)]
        assert len(sender.delivered) == 1
        assert node.budget.used == 0


def test_failed_study_is_quarantined_with_its_reason(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    def failing_predict(*args, **kwargs):
        raise ValueError("no T1ce series")

    cfg = make_config(tmp_path)
    with DicomNode(cfg, predictor=object(), sender=FakeSender(), predict_fn=failing_predict) as n:
        study, series = generate_uid(), generate_uid()
        store_datasets(
            n.dicom_port, [mr_dataset(study_uid=study, series_uid=series, k=k) for k in range(3)]
        )
        (job,) = wait_until(lambda: [j for j in n.jobs.all() if j.quarantined])
        wait_until(lambda: n.budget.used == 0)
        assert job.state == "failed"
    folder = cfg.storage_dir / "quarantine" / job.job_id
    assert job.quarantined == f"quarantine/{job.job_id}"
    assert len(list((folder / "input").rglob("*.dcm"))) == 3
    assert "no T1ce series" in (folder / "reason.txt").read_text()
    assert not (cfg.storage_dir / "jobs" / job.job_id / "input").exists()
    assert f"kept in quarantine/{job.job_id}" in caplog.text


def test_quarantine_is_purged_after_retention_and_beyond_its_cap(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    jobs = JobStore(tmp_path, retention_s=3600.0, max_quarantine_bytes=10**9)
    ids = []
    for n in range(3):
        record = jobs.write(
            JobRecord(f"2026010{n}T000000-abc-00000{n}", generate_uid(), "abc", reason="bad")
        )
        (jobs.input_dir(record.job_id) / "s").mkdir(parents=True)
        (jobs.input_dir(record.job_id) / "s" / "1.dcm").write_bytes(bytes(1000))
        jobs.update(record, state="failed")
        jobs.quarantine(record)
        ids.append(record.job_id)
    assert jobs.purge_quarantine() == []  # within the retention and the cap
    jobs.max_quarantine_bytes = 2500  # the oldest goes
    assert jobs.purge_quarantine() == [ids[0]]
    assert jobs.purge_quarantine(now=time.time() + 7200) == ids[1:]  # retention over
    assert "quarantine: deleted the instances of failed job" in caplog.text
    assert not any((tmp_path / "quarantine").iterdir())


def test_zero_retention_deletes_with_a_log_line(tmp_path, caplog):
    jobs = JobStore(tmp_path, retention_s=0.0)
    record = jobs.write(JobRecord("20260101T000000-abc-000000", generate_uid(), "abc"))
    jobs.input_dir(record.job_id).mkdir(parents=True)
    jobs.update(record, state="failed", reason="bad")
    jobs.quarantine(record)
    assert not jobs.input_dir(record.job_id).exists()
    assert "instances are deleted (failed_retention_s 0)" in caplog.text
