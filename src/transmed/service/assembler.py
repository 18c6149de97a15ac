"""Studies in, jobs out: a study is complete after a quiet period, then it waits for the worker.

A study counts as complete when no instance of it has arrived for ``quiet_period_s`` and no
association that sent part of it is still open (a slow sender mid-study is not cut off by a
pause between two of its C-STOREs). The complete study is sealed into a job on disk; jobs go
to the worker through a bounded in-memory queue, and while the queue is full they wait on disk
in arrival order (nothing is dropped).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable

from transmed.service.jobs import JobRecord, JobStore, new_job_id
from transmed.service.keys import study_log_key
from transmed.service.storage import IncomingStore

log = logging.getLogger(__name__)


class JobQueue:
    """A bounded FIFO of job ids that remembers the longest it has been."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._q: queue.Queue[str] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self.high_water = 0

    def offer(self, job_id: str) -> bool:
        """Add ``job_id`` if there is room; never blocks."""
        try:
            self._q.put_nowait(job_id)
        except queue.Full:
            return False
        with self._lock:
            self.high_water = max(self.high_water, self._q.qsize())
        return True

    def get(self, timeout: float) -> str | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def __len__(self) -> int:
        return self._q.qsize()


class StudyAssembler:
    """Tracks studies being received, seals the quiet ones into jobs and feeds the queue.

    Args:
        store: where instances are received.
        jobs: where sealed studies become jobs.
        job_queue: the worker's bounded queue.
        quiet_period_s: seconds without a new instance (and no open association) after which
            a study is complete.
        on_complete: called with each new job (metrics).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        store: IncomingStore,
        jobs: JobStore,
        job_queue: JobQueue,
        quiet_period_s: float,
        on_complete: Callable[[JobRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.jobs, self.queue = store, jobs, job_queue
        self.quiet_period_s = quiet_period_s
        self.on_complete = on_complete
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # study UID -> clock() of its latest instance
        self._open: dict[int, set[str]] = {}  # association id -> studies it has sent
        self._backlog: deque[str] = deque()  # sealed job ids waiting for room in the queue

    def instance_received(self, study_uid: str, association_id: int | None = None) -> None:
        with self._lock:
            self._last[study_uid] = self.clock()
            if association_id is not None:
                self._open.setdefault(association_id, set()).add(study_uid)

    def association_closed(self, association_id: int) -> None:
        with self._lock:
            for study in self._open.pop(association_id, set()):
                if study in self._last:  # the quiet period starts when the sender is gone
                    self._last[study] = max(self._last[study], self.clock())

    def recover(self, studies_in_incoming: list[str], pending_jobs: list[JobRecord]) -> None:
        """After a restart: studies left in ``incoming`` get a fresh quiet period; unfinished
        jobs go back in line, oldest first."""
        with self._lock:
            now = self.clock()
            for study in studies_in_incoming:
                self._last.setdefault(study, now)
            for record in pending_jobs:
                if record.job_id not in self._backlog:
                    self._backlog.append(record.job_id)

    @property
    def backlog(self) -> int:
        """Sealed studies waiting on disk for room in the queue."""
        return len(self._backlog)

    @property
    def receiving(self) -> int:
        """Studies still being received (quiet period not over)."""
        return len(self._last)

    def tick(self) -> list[JobRecord]:
        """Seal every study that is complete now, then move waiting jobs into the queue."""
        with self._lock:
            now = self.clock()
            busy = set().union(*self._open.values()) if self._open else set()
            due = [
                s for s, t in self._last.items() if now - t >= self.quiet_period_s and s not in busy
            ]
            for study in due:
                del self._last[study]
        sealed = [r for r in (self._seal(s) for s in due) if r is not None]
        with self._lock:
            self._backlog.extend(r.job_id for r in sealed if r.state == "received")
            while self._backlog and self.queue.offer(self._backlog[0]):
                self._backlog.popleft()
        return sealed

    def _seal(self, study_uid: str) -> JobRecord | None:
        job_id = new_job_id(study_uid)
        record = JobRecord(job_id, study_uid, study_log_key(study_uid), completed_at=time.time())
        self.jobs.write(record)  # first: a crash before the move leaves the study in incoming
        try:
            sealed = self.store.seal(study_uid, self.jobs.input_dir(job_id))
        except OSError as exc:
            log.error(
                "study %s: cannot move it into job %s (%s); retried after the quiet period",
                record.study_key,
                job_id,
                exc.strerror,
            )
            with self._lock:
                self._last.setdefault(study_uid, self.clock())
            sealed = None
        if sealed is None:
            shutil.rmtree(self.jobs.folder(job_id), ignore_errors=True)
            return None
        changes: dict[str, object] = {
            "instances": sealed.instances,
            "bytes": sealed.bytes,
            "first_received_at": sealed.first_received_at,
        }
        if sealed.refused:
            changes.update(
                state="failed",
                reason=f"refused while receiving: {sealed.refused}",
                finished_at=time.time(),
            )
        self.jobs.update(record, **changes)
        if sealed.refused:
            log.error("study %s: job %s failed: %s", record.study_key, job_id, record.reason)
            self.jobs.quarantine(record)
            self.store.budget.release(sealed.bytes)
        else:
            log.info(
                "study %s complete: %d instances, %.1f MB -> job %s",
                record.study_key,
                sealed.instances,
                sealed.bytes / 1e6,
                job_id,
            )
        if self.on_complete is not None:
            self.on_complete(record)
        return record
