"""The inference worker: one thread, one model in memory, one study at a time.

It runs the same inference path as ``transmed predict`` on DICOM input
(:func:`transmed.inference.dicom.predict_dicom_study`, with the node's voxel cap). A failure of
one study (a :class:`~transmed.io.dicom.DicomError` for bad input, or anything else) is
recorded in that study's state file and logged with the study's hash, and the worker goes on
with the next.
A processed study's images, with a copy of its predicted SEG in ``output/``, stay for
``review_retention_s`` so ``transmed view`` can show and correct it
(:meth:`~transmed.service.jobs.JobStore.finish`; 0 deletes them at once); a failed study's go
to the quarantine (:meth:`~transmed.service.jobs.JobStore.quarantine`) with the reason.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from transmed.service.assembler import JobQueue
from transmed.service.jobs import JobRecord, JobStore
from transmed.service.metrics import Metrics
from transmed.service.outbox import Outbox, OutboxItem
from transmed.service.privacy import identifiers_in_folder, redact
from transmed.service.storage import DiskBudget

log = logging.getLogger(__name__)


def _default_predict() -> Callable[..., Any]:
    from transmed.inference.dicom import predict_dicom_study

    return predict_dicom_study


class InferenceWorker:
    """Takes job ids from the queue, predicts, hands the SEG to the outbox.

    Args:
        jobs, job_queue, outbox, budget, metrics: the node's parts.
        predictor: the loaded :class:`~transmed.inference.predictor.Predictor` (loaded once).
        segments: ``predict_dicom_study``'s ``segments``.
        max_voxels: cap per series (``predict_dicom_study``'s ``max_voxels``).
        rules: modality rules (``None``: the defaults).
        predict_fn: the inference function (tests pass a fake).
        on_delivered_ready: called after a SEG entered the outbox (wakes the sender).
    """

    def __init__(
        self,
        jobs: JobStore,
        job_queue: JobQueue,
        outbox: Outbox,
        budget: DiskBudget,
        metrics: Metrics,
        predictor: Any,
        *,
        segments: str = "regions",
        max_voxels: int | None = None,
        rules: Any = None,
        predict_fn: Callable[..., Any] | None = None,
        on_delivered_ready: Callable[[], None] | None = None,
    ) -> None:
        self.jobs, self.queue, self.outbox = jobs, job_queue, outbox
        self.budget, self.metrics, self.predictor = budget, metrics, predictor
        self.segments, self.max_voxels, self.rules = segments, max_voxels, rules
        self.predict_fn = predict_fn  # None: predict_dicom_study, imported at first use
        self.on_ready = on_delivered_ready
        self.current: str | None = None  # job being processed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def process(self, job_id: str) -> JobRecord:
        """Process one job to ``done`` or ``failed``; never raises for a bad study."""
        record = self.jobs.get(job_id)
        if record.state not in ("received", "processing"):
            return record
        if self.outbox.has_job(job_id):  # SEG made before a restart: do not make a second one
            record = self.jobs.update(record, state="done", finished_at=time.time())
            self._finish(record)
            return record
        started = time.time()
        if record.completed_at:
            self.metrics.observe("queue_wait_s", max(0.0, started - record.completed_at))
        record = self.jobs.update(
            record, state="processing", started_at=started, attempts=record.attempts + 1
        )
        log.info(
            "study %s: job %s processing (%d instances)", record.study_key, job_id, record.instances
        )
        input_dir, output_dir = self.jobs.input_dir(job_id), self.jobs.output_dir(job_id)
        try:
            kwargs: dict[str, Any] = {"rules": self.rules, "segments": self.segments}
            if self.max_voxels is not None:
                kwargs["max_voxels"] = self.max_voxels
            predict = self.predict_fn or _default_predict()
            result = predict(self.predictor, input_dir, output_dir, **kwargs)
            item = OutboxItem(
                item_id=str(result.seg_sop_instance_uid),
                job_id=job_id,
                study_key=record.study_key,
                first_received_at=record.first_received_at or None,
                completed_at=record.completed_at or None,
            )
            if self.jobs.review_retention_s > 0:  # the outbox deletes its copy once delivered
                kept = output_dir / f"kept_{item.item_id}.dcm"
                if kept != result.seg_path:
                    shutil.copyfile(result.seg_path, kept)
            self.outbox.add(result.seg_path, item)
        except Exception as exc:
            self._failed(record, exc, input_dir)
            return record
        timings = {k: round(float(v), 3) for k, v in (result.timings or {}).items()}
        record = self.jobs.update(
            record,
            state="done",
            finished_at=time.time(),
            seg_sop_instance_uid=item.item_id,
            timings=timings,
        )
        self.metrics.observe("processing_s", record.finished_at - started)  # type: ignore[operator]
        self.metrics.incr("studies_processed")
        log.info(
            "study %s: job %s done in %.1f s; SEG queued for delivery",
            record.study_key,
            job_id,
            record.finished_at - started,
        )  # type: ignore[operator]
        self._finish(record)
        if self.on_ready is not None:
            self.on_ready()
        return record

    def _failed(self, record: JobRecord, exc: BaseException, input_dir: Any) -> None:
        identifiers = identifiers_in_folder(input_dir) if input_dir.is_dir() else set()
        reason = redact(f"{type(exc).__name__}: {exc}", identifiers)
        self.jobs.update(record, state="failed", reason=reason, finished_at=time.time())
        self.metrics.incr("studies_failed")
        log.error("study %s: job %s failed: %s", record.study_key, record.job_id, reason)
        from transmed.io.dicom import DicomError

        if not isinstance(exc, DicomError):  # an unexpected failure: keep the traceback
            log.debug(
                "study %s: traceback:\n%s",
                record.study_key,
                redact("".join(traceback.format_exception(exc)), identifiers),
            )
        self.jobs.quarantine(record)
        self.budget.release(record.bytes)

    def _finish(self, record: JobRecord) -> None:
        self.jobs.finish(record)  # kept for review: out of the incoming budget, own cap
        self.budget.release(record.bytes)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job_id = self.queue.get(timeout=0.2)
            if job_id is None:
                continue
            self.current = job_id
            try:
                self.process(job_id)
            except Exception as exc:  # the node's own bug (e.g. disk full): log, keep serving
                log.error("job %s: worker error %s: %s", job_id, type(exc).__name__, exc)
            finally:
                self.current = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="transmed-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current study (an inference cannot be interrupted midway)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
