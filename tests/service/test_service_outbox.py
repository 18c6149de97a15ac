"""The outbox: retry with backoff, persistence across restarts, delivered once."""

from __future__ import annotations

import json

import pytest
from pydicom.uid import generate_uid
from service_helpers import FakeSender, fake_predict, wait_until

from transmed.service.assembler import JobQueue
from transmed.service.config import RetryConfig
from transmed.service.jobs import JobRecord, JobStore
from transmed.service.metrics import Metrics
from transmed.service.outbox import Outbox, OutboxItem, OutboxSender, backoff_delay
from transmed.service.storage import DiskBudget
from transmed.service.worker import InferenceWorker

RETRY = RetryConfig(initial_s=1.0, max_s=5.0, factor=2.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _add(outbox: Outbox, tmp_path, job="job-1") -> OutboxItem:
    uid = generate_uid()
    seg = tmp_path / f"{uid}.tmp.dcm"
    seg.write_bytes(b"seg " + uid.encode())
    return outbox.add(seg, OutboxItem(item_id=uid, job_id=job, study_key="abc"))


def test_backoff_schedule():
    assert [backoff_delay(n, RETRY) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retries_with_backoff_then_delivers_once(tmp_path):
    clock, sender, metrics = Clock(), FakeSender(down=True), Metrics()
    outbox = Outbox(tmp_path)
    item = _add(outbox, tmp_path)
    worker = OutboxSender(outbox, sender, RETRY, metrics, clock=clock)
    waits = []
    for _ in range(4):
        assert worker.run_once() == 1
        nxt = outbox.next_due_at()
        waits.append(nxt - clock.t)
        clock.t = nxt - 0.01
        assert worker.run_once() == 0  # not due yet: no attempt
        clock.t = nxt
    assert waits == [1.0, 2.0, 4.0, 5.0]
    (pending,) = outbox.items("pending")
    assert pending.attempts == 4 and "down" in pending.last_error
    sender.down = False
    worker.run_once()
    assert sender.delivered == [item.item_id]
    clock.t += 100
    assert worker.run_once() == 0  # delivered items are never sent again
    assert sender.delivered == [item.item_id]
    (done,) = outbox.items("delivered")
    assert done.attempts == 5
    assert not outbox.dcm_path(item.item_id).exists()  # our copy of the images is gone
    assert metrics.counters["seg_delivered"] == 1 and metrics.counters["delivery_failures"] == 4


def test_permanent_refusal_is_not_retried(tmp_path):
    clock, sender = Clock(), FakeSender(down=True, permanent=True)
    outbox = Outbox(tmp_path)
    _add(outbox, tmp_path)
    worker = OutboxSender(outbox, sender, RETRY, clock=clock)
    worker.run_once()
    clock.t += 1000
    worker.run_once()
    assert sender.attempts == 1
    (failed,) = outbox.items("failed")
    assert outbox.pending_count() == 0 and failed.last_error == "destination down"


def test_pending_items_survive_a_restart(tmp_path):
    clock, sender = Clock(), FakeSender(down=True)
    outbox = Outbox(tmp_path)
    items = [_add(outbox, tmp_path, job=f"job-{n}") for n in range(3)]
    OutboxSender(outbox, sender, RETRY, clock=clock).run_once()
    state = json.loads((outbox.root / f"{items[0].item_id}.json").read_text())
    assert state["state"] == "pending" and state["attempts"] == 1

    # restart: a new outbox over the same folder, the PACS back up
    outbox2 = Outbox(tmp_path)
    (outbox2.root / "1.2.3.dcm").write_bytes(b"stray: moved in, JSON never written")
    pending = outbox2.recover()
    assert sorted(i.item_id for i in pending) == sorted(i.item_id for i in items)
    assert not (outbox2.root / "1.2.3.dcm").exists()
    sender2 = FakeSender()
    worker = OutboxSender(outbox2, sender2, RETRY, clock=clock)
    clock.t += 10
    worker.run_once()
    assert sorted(sender2.delivered) == sorted(i.item_id for i in items)
    assert Outbox(tmp_path).recover() == []


def test_pending_item_without_its_file_is_marked_failed(tmp_path):
    outbox = Outbox(tmp_path)
    item = _add(outbox, tmp_path)
    outbox.dcm_path(item.item_id).unlink()
    again = Outbox(tmp_path)
    assert again.recover() == []
    (failed,) = again.items("failed")
    assert "missing" in failed.last_error


def test_sender_thread_delivers_after_outage(tmp_path):
    sender = FakeSender(down=True)
    outbox = Outbox(tmp_path)
    worker = OutboxSender(outbox, sender, RetryConfig(initial_s=0.05, max_s=0.1), Metrics())
    worker.start()
    try:
        item = _add(outbox, tmp_path)
        worker.wake()
        wait_until(lambda: sender.attempts >= 3, timeout=5)
        sender.down = False
        wait_until(lambda: sender.delivered, timeout=5)
    finally:
        worker.stop()
    assert sender.delivered == [item.item_id]


def test_a_sender_bug_does_not_kill_the_thread(tmp_path):
    class Broken(FakeSender):
        def send(self, path):
            self.attempts += 1
            raise KeyError("bug")

    outbox = Outbox(tmp_path)
    sender = Broken()
    worker = OutboxSender(outbox, sender, RetryConfig(initial_s=0.05, max_s=0.05))
    worker.start()
    try:
        _add(outbox, tmp_path)
        worker.wake()
        wait_until(lambda: sender.attempts >= 2, timeout=5)
        assert worker.is_alive()
    finally:
        worker.stop()
    (item,) = outbox.items("pending")
    assert "KeyError" in item.last_error


@pytest.mark.parametrize("seg_in_outbox", [True, False])
def test_worker_restart_never_makes_a_second_seg(tmp_path, seg_in_outbox):
    """A job interrupted after its SEG reached the outbox is closed, not predicted again."""
    jobs, outbox = JobStore(tmp_path), Outbox(tmp_path)
    record = jobs.write(
        JobRecord("20260101T000000-abc-000001", generate_uid(), "abc", state="processing", bytes=10)
    )
    inp = jobs.input_dir(record.job_id)
    inp.mkdir(parents=True)
    (inp / "1.dcm").write_bytes(b"x")
    if seg_in_outbox:
        _add(outbox, tmp_path, job=record.job_id)
    calls = []

    def predict(*args, **kwargs):
        calls.append(1)
        return fake_predict(*args, **kwargs)

    worker = InferenceWorker(
        jobs, JobQueue(1), outbox, DiskBudget(100, 10), Metrics(), None, predict_fn=predict
    )
    done = worker.process(record.job_id)
    assert done.state == "done"
    assert len(calls) == (0 if seg_in_outbox else 1)
    assert len(outbox.items()) == 1
    assert not inp.exists()
