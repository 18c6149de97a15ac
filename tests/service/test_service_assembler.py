"""Assembling studies: the quiet period, open associations, the bounded queue, recovery."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from service_helpers import mr_dataset

from transmed.service.assembler import JobQueue, StudyAssembler
from transmed.service.config import LimitsConfig
from transmed.service.jobs import JobStore
from transmed.service.storage import DiskBudget, IncomingStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def parts(tmp_path):
    clock = Clock()
    store = IncomingStore(tmp_path, LimitsConfig(), DiskBudget(10**9))
    jobs = JobStore(tmp_path)
    queue = JobQueue(2)
    asm = StudyAssembler(store, jobs, queue, quiet_period_s=5.0, clock=clock)
    return clock, store, jobs, queue, asm


def _receive(store, asm, study, n=1, assoc=None):
    series = generate_uid()
    for k in range(n):
        ds = mr_dataset(study_uid=study, series_uid=series, k=k)
        store.put(ds, b"DICM" + bytes(200))
        asm.instance_received(study, assoc)


def test_study_is_complete_only_after_the_quiet_period(parts):
    clock, store, jobs, queue, asm = parts
    study = generate_uid()
    _receive(store, asm, study, 3)
    clock.t += 4.9
    assert asm.tick() == []
    _receive(store, asm, study, 1)  # a late instance restarts the quiet period
    clock.t += 4.9
    assert asm.tick() == []
    clock.t += 0.2
    (record,) = asm.tick()
    assert record.state == "received" and record.instances == 4
    assert len(queue) == 1 and asm.receiving == 0
    assert len(list(jobs.input_dir(record.job_id).rglob("*.dcm"))) == 4
    assert not (store.incoming / study).exists()


def test_an_open_association_holds_its_study(parts):
    clock, store, jobs, queue, asm = parts
    study = generate_uid()
    _receive(store, asm, study, 2, assoc=7)
    clock.t += 60
    assert asm.tick() == []  # the sender is still connected: maybe more to come
    asm.association_closed(7)
    clock.t += 4.9
    assert asm.tick() == []  # the quiet period starts at the release
    clock.t += 0.2
    assert len(asm.tick()) == 1


def test_full_queue_keeps_studies_waiting_on_disk_in_order(parts):
    clock, store, jobs, queue, asm = parts
    studies = [generate_uid() for _ in range(5)]
    for s in studies:
        _receive(store, asm, s)
    clock.t += 10
    sealed = asm.tick()
    assert len(sealed) == 5
    assert len(queue) == 2 and asm.backlog == 3 and queue.high_water == 2
    order = [queue.get(0.1) for _ in range(2)]
    asm.tick()
    order += [queue.get(0.1) for _ in range(2)]
    asm.tick()
    order += [queue.get(0.1)]
    assert order == [r.job_id for r in sealed]  # arrival order, nothing dropped
    assert queue.high_water <= queue.maxsize


def test_instances_after_sealing_start_a_new_study_folder(parts):
    clock, store, jobs, queue, asm = parts
    study = generate_uid()
    _receive(store, asm, study, 2)
    clock.t += 10
    first = asm.tick()
    _receive(store, asm, study, 1)
    clock.t += 10
    second = asm.tick()
    assert len(first) == len(second) == 1 and first[0].job_id != second[0].job_id
    assert (first[0].instances, second[0].instances) == (2, 1)


def test_recovery_after_restart(tmp_path):
    clock = Clock()
    budget = DiskBudget(10**9)
    store = IncomingStore(tmp_path, LimitsConfig(), budget)
    jobs = JobStore(tmp_path)
    asm = StudyAssembler(store, jobs, JobQueue(1), 5.0, clock=clock)
    waiting, sealed_study = generate_uid(), generate_uid()
    _receive(store, asm, sealed_study, 2)
    clock.t += 10
    (job,) = asm.tick()
    _receive(store, asm, waiting, 2)
    (store.incoming / waiting / "x").mkdir()
    (store.incoming / waiting / "x" / ".1.dcm.abc.tmp").write_bytes(b"half")  # a crash mid-write
    (store.incoming / "not-a-uid").mkdir()  # nothing the node wrote
    # a job whose state file was written but whose study never moved in (crash in between)
    orphan = jobs.write(
        type(job)(job_id="20260101T000000-abc-000000", study_uid=waiting, study_key="abc")
    )

    # "restart": fresh objects over the same folder
    budget2 = DiskBudget(10**9)
    store2 = IncomingStore(tmp_path, LimitsConfig(), budget2)
    jobs2 = JobStore(tmp_path)
    queue2 = JobQueue(1)
    asm2 = StudyAssembler(store2, jobs2, queue2, 5.0, clock=clock)
    studies = store2.recover()
    pending = jobs2.recover()
    asm2.recover(studies, pending)
    assert studies == [waiting]
    assert [r.job_id for r in pending] == [job.job_id]
    assert not jobs2.folder(orphan.job_id).exists()
    assert not (store2.incoming / "not-a-uid").exists()
    assert not list(store2.incoming.rglob(".*.tmp"))
    assert budget2.used > 0
    clock.t += 10
    (new,) = asm2.tick()
    assert new.study_uid == waiting and new.instances == 2
    assert queue2.get(0.1) == job.job_id  # the older job first
