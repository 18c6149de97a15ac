"""The persistent outbox: every SEG is delivered exactly once, across PACS outages and restarts.

On disk, ``storage/outbox/<SEG SOP Instance UID>.dcm`` and ``.json`` (the item's state,
written atomically). An item exists once its JSON exists; the SEG file is moved in first, so
a crash in between leaves a stray file that :meth:`Outbox.recover` removes (the job was not
marked done, so it is processed again). The sender marks an item delivered only after the
destination confirmed it. A crash between the destination's confirmation and that mark sends
the SEG again after the restart; the SEG keeps its SOP Instance UID, so the PACS stores it
once (Orthanc ignores a second copy of an instance it holds): at-least-once sending plus an
idempotent receiver gives exactly-once delivery. Failures are retried with exponential backoff;
a refusal the destination says is permanent (bad data, not a transient outage) stops retrying
and is logged as an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from transmed.io.atomic import atomic_write_text
from transmed.service.config import RetryConfig
from transmed.service.keys import safe_join, uid_key
from transmed.service.metrics import Metrics

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A delivery attempt failed. ``permanent``: retrying cannot help (the PACS refused the
    data itself); otherwise the outage is assumed transient and the item is retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sender(Protocol):
    """Delivers one DICOM file to the destination, or raises :class:`DeliveryError`."""

    def send(self, path: Path) -> None: ...

    def describe(self) -> str: ...


@dataclass
class OutboxItem:
    """One SEG to deliver (times are epoch seconds)."""

    item_id: str  # the SEG's SOP Instance UID
    job_id: str
    study_key: str
    state: str = "pending"  # pending | delivered | failed
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    delivered_at: float | None = None
    first_received_at: float | None = None  # for the end-to-end latency
    completed_at: float | None = None


def backoff_delay(attempts: int, retry: RetryConfig) -> float:
    """Seconds before the next try after ``attempts`` failed ones (≥ 1)."""
    return min(retry.max_s, retry.initial_s * retry.factor ** max(0, attempts - 1))


class Outbox:
    """The outbox folder and its items (thread-safe)."""

    def __init__(self, storage_dir: Path) -> None:
        self.root = Path(storage_dir) / "outbox"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._items: dict[str, OutboxItem] = {}

    def dcm_path(self, item_id: str) -> Path:
        return safe_join(self.root, f"{uid_key(item_id, 'SEG SOP Instance UID')}.dcm")

    def _json_path(self, item_id: str) -> Path:
        return safe_join(self.root, f"{uid_key(item_id, 'SEG SOP Instance UID')}.json")

    def _save(self, item: OutboxItem) -> None:
        atomic_write_text(
            self._json_path(item.item_id), json.dumps(dataclasses.asdict(item), indent=1) + "\n"
        )

    def add(self, seg_path: Path, item: OutboxItem) -> OutboxItem:
        """Move ``seg_path`` (on the storage file system) into the outbox as ``item``."""
        item.created_at = item.created_at or time.time()
        os.replace(seg_path, self.dcm_path(item.item_id))
        with self._lock:
            self._save(item)
            self._items[item.item_id] = item
        return item

    def recover(self) -> list[OutboxItem]:
        """Load the items on disk; drop stray SEG files; return the pending items."""
        with self._lock:
            self._items.clear()
            for path in sorted(self.root.glob("*.json")):
                try:
                    data = json.loads(path.read_text("utf-8"))
                    known = {f.name for f in dataclasses.fields(OutboxItem)}
                    item = OutboxItem(**{k: v for k, v in data.items() if k in known})
                    uid_key(item.item_id)
                except (OSError, ValueError, TypeError) as exc:
                    log.error("outbox: unreadable item %s (%s); left in place", path.name, exc)
                    continue
                if item.state == "pending" and not self.dcm_path(item.item_id).is_file():
                    item.state, item.last_error = "failed", "SEG file missing after a restart"
                    log.error("outbox: job %s: %s", item.job_id, item.last_error)
                    self._save(item)
                self._items[item.item_id] = item
            for path in self.root.glob("*.dcm"):
                if path.stem not in self._items:
                    path.unlink(missing_ok=True)
            for path in self.root.glob(".*.tmp"):
                path.unlink(missing_ok=True)
            return [i for i in self._items.values() if i.state == "pending"]

    def items(self, state: str | None = None) -> list[OutboxItem]:
        with self._lock:
            return [
                dataclasses.replace(i)
                for i in self._items.values()
                if state is None or i.state == state
            ]

    def has_job(self, job_id: str) -> bool:
        with self._lock:
            return any(i.job_id == job_id for i in self._items.values())

    def pending_count(self) -> int:
        with self._lock:
            return sum(i.state == "pending" for i in self._items.values())

    def due(self, now: float) -> list[OutboxItem]:
        """Pending items whose next attempt is due, oldest first."""
        with self._lock:
            items = [
                i for i in self._items.values() if i.state == "pending" and i.next_attempt_at <= now
            ]
        return sorted(items, key=lambda i: i.created_at)

    def next_due_at(self) -> float | None:
        with self._lock:
            times = [i.next_attempt_at for i in self._items.values() if i.state == "pending"]
        return min(times) if times else None

    def mark(self, item_id: str, **changes: object) -> OutboxItem:
        with self._lock:
            item = self._items[item_id]
            for key, value in changes.items():
                setattr(item, key, value)
            self._save(item)
            if item.state == "delivered":  # the PACS holds it now; drop our copy of the images
                self.dcm_path(item_id).unlink(missing_ok=True)
            return dataclasses.replace(item)


class OutboxSender:
    """The thread that delivers due items and reschedules failures with backoff.

    Args:
        outbox: the items.
        sender: how to deliver (C-STORE or STOW-RS, or a fake in tests).
        retry: the backoff schedule.
        metrics: counters and latencies to update.
        clock: epoch seconds (tests pass a fake one).
    """

    def __init__(
        self,
        outbox: Outbox,
        sender: Sender,
        retry: RetryConfig,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox, self.sender, self.retry = outbox, sender, retry
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Look for due items now (a new item was added)."""
        self._wake.set()

    def attempt(self, item: OutboxItem) -> OutboxItem:
        """Try to deliver one item now; record the outcome."""
        path = self.outbox.dcm_path(item.item_id)
        try:
            self.sender.send(path)
        except DeliveryError as exc:
            return self._failed(item, str(exc), exc.permanent)
        except Exception as exc:  # a sender bug must not kill the thread; retry later
            return self._failed(item, f"{type(exc).__name__}: {exc}", False)
        now = self.clock()
        done = self.outbox.mark(
            item.item_id,
            state="delivered",
            delivered_at=now,
            attempts=item.attempts + 1,
            last_error=None,
        )
        if done.completed_at:
            self.metrics.observe("turnaround_s", now - done.completed_at)
        if done.first_received_at:
            self.metrics.observe("total_s", now - done.first_received_at)
        self.metrics.incr("seg_delivered")  # last: a reader that sees it sees the latencies
        log.info(
            "study %s: SEG of job %s delivered to %s (attempt %d)",
            done.study_key,
            done.job_id,
            self.sender.describe(),
            done.attempts,
        )
        return done

    def _failed(self, item: OutboxItem, error: str, permanent: bool) -> OutboxItem:
        attempts = item.attempts + 1
        self.metrics.incr("delivery_failures")
        if permanent:
            self.metrics.incr("delivery_abandoned")
            log.error(
                "study %s: SEG of job %s refused by %s, not retried: %s",
                item.study_key,
                item.job_id,
                self.sender.describe(),
                error,
            )
            return self.outbox.mark(
                item.item_id, state="failed", attempts=attempts, last_error=error
            )
        delay = backoff_delay(attempts, self.retry)
        log.warning(
            "study %s: delivery of job %s to %s failed (attempt %d: %s); retry in %.1f s",
            item.study_key,
            item.job_id,
            self.sender.describe(),
            attempts,
            error,
            delay,
        )
        return self.outbox.mark(
            item.item_id, attempts=attempts, last_error=error, next_attempt_at=self.clock() + delay
        )

    def run_once(self) -> int:
        """Attempt every due item once; return how many were attempted."""
        due = self.outbox.due(self.clock())
        for item in due:
            if self._stop.is_set():
                break
            self.attempt(item)
        return len(due)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            nxt = self.outbox.next_due_at()
            wait = 1.0 if nxt is None else min(1.0, max(0.0, nxt - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="transmed-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
