"""``DicomNode``: the DICOM node wired from its parts, with ``start()`` and ``stop()``.

    C-STORE ──> incoming/ ──(quiet period)──> jobs/<id>/ ──(bounded queue)──> worker
        ──> outbox/ ──(C-STORE or STOW-RS, retried with backoff)──> PACS

Everything between two arrows is on disk under ``storage_dir``, so a restart resumes where the
node stopped: studies being received get a fresh quiet period that starts once the listener
accepts again (instances the sender then resends join them), unfinished jobs run again
(unless their SEG already reached the outbox), undelivered SEGs are sent. A failed study's
instances go to ``quarantine/`` with the reason, kept ``failed_retention_s``. Usable in-process
(tests, benchmarks: ports 0 pick free ports) and by ``transmed serve``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transmed.service.assembler import JobQueue, StudyAssembler
from transmed.service.config import ServiceConfig
from transmed.service.guards import raise_fd_limit
from transmed.service.http import StatusServer
from transmed.service.jobs import JobRecord, JobStore
from transmed.service.metrics import Metrics
from transmed.service.outbox import Outbox, OutboxSender, Sender
from transmed.service.privacy import install_log_guards
from transmed.service.scp import DicomListener
from transmed.service.senders import make_sender
from transmed.service.storage import DiskBudget, IncomingStore, tree_size
from transmed.service.worker import InferenceWorker

log = logging.getLogger(__name__)


def load_predictor(config: ServiceConfig) -> Any:
    """The model, loaded once (``Predictor.from_path``); torch threads set when configured."""
    import torch

    from transmed.inference.predictor import Predictor

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    return Predictor.from_path(config.model, device=config.device)


class DicomNode:
    """The whole service in one object.

    Args:
        config: the validated configuration.
        predictor: an already loaded predictor (default: loaded from ``config.model``).
        sender: the delivery (default: from ``config.destination``); tests pass fakes.
        predict_fn: the worker's inference function (tests only; default
            ``predict_dicom_study``).
        tick_s: how often complete studies are looked for (seconds).
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        predictor: Any = None,
        sender: Sender | None = None,
        predict_fn: Callable[..., Any] | None = None,
        tick_s: float = 0.1,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self._predictor, self._sender = predictor, sender
        self._predict_fn = predict_fn
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.http: StatusServer | None = None
        self.started = False

    # --- life cycle ---

    def start(self) -> DicomNode:
        """Recover what is on disk, load the model, open the ports, start the threads."""
        cfg = self.config
        install_log_guards()
        soft, hard = raise_fd_limit()
        log.info("open-file limit %d (hard %d)", soft, hard)
        root = cfg.storage_dir
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # patient images: the service account only
        self.budget = DiskBudget(cfg.limits.max_storage_bytes)
        self.store = IncomingStore(root, cfg.limits, self.budget)
        self.jobs = JobStore(root, cfg.failed_retention_s, cfg.max_quarantine_bytes,
                             review_retention_s=cfg.review_retention_s,
                             max_review_bytes=cfg.max_review_bytes)  # fmt: skip
        self.outbox = Outbox(root)
        studies = self.store.recover()
        pending = self.jobs.recover()
        for record in pending:
            self.budget.try_reserve(tree_size(self.jobs.input_dir(record.job_id))[1])
        undelivered = self.outbox.recover()
        self.queue = JobQueue(cfg.queue_size)
        self.assembler = StudyAssembler(
            self.store, self.jobs, self.queue, cfg.quiet_period_s, on_complete=self._on_complete
        )
        if studies or pending or undelivered:
            log.info(
                "recovered from disk: %d studies being received, %d jobs to process, "
                "%d SEGs to deliver",
                len(studies),
                len(pending),
                len(undelivered),
            )
        predictor = self._predictor if self._predictor is not None else load_predictor(cfg)
        sender = self._sender or make_sender(cfg.destination, cfg.ae_title)
        self.sender = OutboxSender(self.outbox, sender, cfg.retry, self.metrics)
        self.worker = InferenceWorker(
            self.jobs,
            self.queue,
            self.outbox,
            self.budget,
            self.metrics,
            predictor,
            segments=cfg.segments,
            max_voxels=cfg.limits.max_voxels,
            rules=_load_rules(cfg.modality_rules),
            predict_fn=self._predict_fn,
            on_delivered_ready=self.sender.wake,
        )
        self._register_gauges()
        self.listener = DicomListener(cfg, self.store, self.assembler, self.metrics)
        self.listener.start()
        # the quiet period of studies left in incoming/ starts now that the listener accepts
        # (not before the model loaded): their senders may resend the rest
        self.assembler.recover(studies, pending)
        try:
            self.worker.start()
            self.sender.start()
            self._ticker = threading.Thread(
                target=self._tick_loop, name="transmed-assembler", daemon=True
            )
            self._ticker.start()
            if cfg.http_port is not None:
                token = cfg.http_token.get_secret_value() if cfg.http_token else None
                self.http = StatusServer(
                    cfg.http_host,
                    cfg.http_port,
                    self.health,
                    self.metrics.snapshot,
                    self.metrics.prometheus,
                    token,
                    max_connections=cfg.http_max_connections,
                    read_timeout_s=cfg.http_read_timeout_s,
                )
                self.http.start()
                log.info("HTTP: health and metrics on http://%s:%d/", cfg.http_host, self.http.port)
        except BaseException:
            self.stop()
            raise
        self.started = True
        log.info("transmed serve ready: AE %s, destination %s", cfg.ae_title, sender.describe())
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish the study in progress (up to ``timeout``), stop the threads.

        Whatever is left (studies being received, queued jobs, undelivered SEGs) stays on disk
        and is picked up by the next start.
        """
        self._stop.set()
        if getattr(self, "listener", None) is not None:
            self.listener.stop()
        if self._ticker is not None:
            self._ticker.join(5.0)
        if getattr(self, "worker", None) is not None:
            self.worker.stop(timeout)
        if getattr(self, "sender", None) is not None:
            self.sender.stop(timeout)
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.started:
            log.info("transmed serve stopped")
        self.started = False

    def __enter__(self) -> DicomNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- status ---

    @property
    def dicom_port(self) -> int:
        return self.listener.port

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def health(self) -> tuple[bool, dict[str, Any]]:
        """The threads are alive and the DICOM listener answers a loopback association."""
        threads = {
            "worker": self.worker.is_alive(),
            "outbox": self.sender.is_alive(),
            "assembler": self._ticker is not None and self._ticker.is_alive(),
        }
        listening, detail = self.listener.self_check()
        details = {
            "threads": threads,
            "dicom_listener": {"ok": listening, "detail": detail},
            "ae_title": self.config.ae_title,
        }
        return all(threads.values()) and listening, details

    def _register_gauges(self) -> None:
        g = self.metrics.gauges
        g["queue_length"] = lambda: len(self.queue)
        g["queue_capacity"] = lambda: self.queue.maxsize
        g["queue_high_water"] = lambda: self.queue.high_water
        g["studies_waiting"] = lambda: self.assembler.backlog
        g["studies_receiving"] = lambda: self.assembler.receiving
        g["studies_in_progress"] = lambda: int(self.worker.current is not None)
        g["outbox_pending"] = self.outbox.pending_count
        g["storage_bytes"] = lambda: self.budget.used
        g["receiving_bytes"] = lambda: self.listener.receive_budget.used
        g["quarantine_bytes"] = self.jobs.quarantine_bytes

    def _on_complete(self, record: JobRecord) -> None:
        self.metrics.incr("studies_received")
        if record.state == "failed":
            self.metrics.incr("studies_failed")

    def _tick_loop(self) -> None:
        next_purge = 0.0
        while not self._stop.wait(self.tick_s):
            try:
                self.assembler.tick()
                if time.monotonic() >= next_purge:
                    self.jobs.purge_quarantine()
                    self.jobs.purge_reviews()
                    next_purge = time.monotonic() + min(
                        60.0, self.config.failed_retention_s,
                        self.config.review_retention_s or 60.0,
                    )  # fmt: skip
            except Exception as exc:  # disk trouble: log, keep trying
                log.error("assembler: %s: %s", type(exc).__name__, exc)
                time.sleep(1.0)


def _load_rules(path: Path | None) -> Any:
    """The configured modality rules (``None``: the defaults); a bad file fails the start."""
    if path is None:
        return None
    from transmed.io.dicom import ModalityRules

    return ModalityRules.from_yaml(path)
