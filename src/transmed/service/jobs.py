"""One job per complete study: ``storage/jobs/<job id>/{state.json, input/, output/}``.

``state.json`` (written atomically) is the record a person or a monitor reads: the state
(``received`` → ``processing`` → ``done`` | ``failed``), the reason of a failure, counts and
times. The job id holds a hash of the Study Instance UID, never a patient identifier. The
input of a processed study is deleted; the record stays. A failed study's input is never
deleted unrecorded: it moves to ``storage/quarantine/<job id>/`` with a ``reason.txt`` (the
record names the folder), kept ``retention_s`` and at most ``max_quarantine_bytes`` in all; each
deletion from there is a log line.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transmed.io.atomic import atomic_write_text
from transmed.service.keys import safe_join, study_log_key
from transmed.service.storage import tree_size

log = logging.getLogger(__name__)

STATES = ("received", "processing", "done", "failed")


@dataclass
class JobRecord:
    """The state file of one study's job (times are epoch seconds)."""

    job_id: str
    study_uid: str
    study_key: str  # what logs call the study: hash of the Study Instance UID
    state: str = "received"
    reason: str | None = None  # why it failed (no patient identifiers)
    instances: int = 0
    bytes: int = 0
    first_received_at: float = 0.0
    completed_at: float = 0.0  # quiet period over: the study was sealed
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0  # processing attempts (a restart mid-inference makes a second)
    seg_sop_instance_uid: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    quarantined: str | None = None  # folder (under storage_dir) holding a failed study's input

    @classmethod
    def from_json(cls, text: str) -> JobRecord:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def expired(entries: list[tuple[float, Any, int]], now: float, retention_s: float,
            max_bytes: int, names: tuple[str, str]) -> list[tuple[Any, str]]:  # fmt: skip
    """Retention policy: of ``(since, item, size)`` entries, those older than ``retention_s``,
    then the oldest while the total exceeds ``max_bytes``; each with the reason (``names``: the
    two settings, for the log). Pure: deleting is the caller's."""
    out = []
    total = sum(size for *_, size in entries)
    for since, item, size in sorted(entries, key=lambda e: e[0]):
        if now - since > retention_s:
            why = f"kept {retention_s / 3600:.0f} h ({names[0]})"
        elif total > max_bytes:
            why = f"over {names[1]} {max_bytes}"
        else:
            continue
        total -= size
        out.append((item, why))
    return out


def new_job_id(study_uid: str) -> str:
    """``<UTC time>-<study hash>-<random>``: sortable by arrival, unique, path-safe."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{study_log_key(study_uid)}-{secrets.token_hex(3)}"


class JobStore:
    """Job folders and their state files, and the quarantine of failed studies (thread-safe).

    Args:
        storage_dir: the node's storage folder.
        retention_s: how long a failed study's instances stay in quarantine (0: deleted at
            once, with a log line).
        max_quarantine_bytes: beyond this, the oldest quarantined studies are deleted.
        review_retention_s: how long a processed study's images (``input/``) and predicted
            SEG (``output/``) stay for ``transmed view`` (0: deleted once processed).
        max_review_bytes: beyond this, the oldest kept studies are deleted.
    """

    def __init__(
        self,
        storage_dir: Path,
        retention_s: float = 7 * 24 * 3600.0,
        max_quarantine_bytes: int = 10 * 2**30,
        *,
        review_retention_s: float = 0.0,
        max_review_bytes: int = 20 * 2**30,
    ) -> None:
        self.root = Path(storage_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.quarantine_root = Path(storage_dir) / "quarantine"
        self.retention_s, self.max_quarantine_bytes = retention_s, max_quarantine_bytes
        self.review_retention_s, self.max_review_bytes = review_retention_s, max_review_bytes
        self._lock = threading.Lock()

    def folder(self, job_id: str) -> Path:
        return safe_join(self.root, job_id)

    def input_dir(self, job_id: str) -> Path:
        return self.folder(job_id) / "input"

    def output_dir(self, job_id: str) -> Path:
        return self.folder(job_id) / "output"

    def write(self, record: JobRecord) -> JobRecord:
        with self._lock:
            atomic_write_text(
                self.folder(record.job_id) / "state.json",
                json.dumps(dataclasses.asdict(record), indent=1) + "\n",
            )
        return record

    def update(self, record: JobRecord, **changes: Any) -> JobRecord:
        for key, value in changes.items():
            if not hasattr(record, key):
                raise AttributeError(f"JobRecord has no field {key!r}")
            setattr(record, key, value)
        return self.write(record)

    def get(self, job_id: str) -> JobRecord:
        return JobRecord.from_json((self.folder(job_id) / "state.json").read_text("utf-8"))

    def all(self) -> list[JobRecord]:
        """Every job with a readable state file, oldest first."""
        records = []
        for folder in sorted(self.root.iterdir()):
            try:
                records.append(self.get(folder.name))
            except (OSError, ValueError, TypeError):
                continue
        return records

    def recover(self) -> list[JobRecord]:
        """After a restart: drop jobs whose study never moved in (the state file is written
        before the input is moved, so the study is still in ``incoming``); return the jobs
        still to process, oldest first."""
        pending = []
        for folder in sorted(self.root.iterdir()):
            try:
                record = self.get(folder.name)
            except (OSError, ValueError, TypeError):
                record = None
            has_input = (folder / "input").is_dir()
            if record is None or (record.state == "received" and not has_input):
                shutil.rmtree(folder, ignore_errors=True)
            elif record.state in ("received", "processing"):
                pending.append(record)
            elif record.state == "failed" and has_input:  # stopped before its quarantine
                self.quarantine(record)
            elif has_input or (folder / "output").is_dir():  # stopped before its clean-up
                self.clean(record)
        return pending

    def clean(self, record: JobRecord) -> None:
        """Delete the job's input and output (the patient's images); keep ``state.json``."""
        shutil.rmtree(self.input_dir(record.job_id), ignore_errors=True)
        shutil.rmtree(self.output_dir(record.job_id), ignore_errors=True)

    def finish(self, record: JobRecord) -> None:
        """A processed job: keep its images and SEG for review (``review_retention_s`` > 0;
        ``transmed view STORAGE`` reads ``input/`` and ``output/*.dcm``), else :meth:`clean`."""
        if self.review_retention_s <= 0:
            self.clean(record)

    def purge_reviews(self, now: float | None = None) -> list[str]:
        """Delete kept studies (:meth:`finish`) past ``review_retention_s``, then the oldest
        beyond ``max_review_bytes``; the state file and any reviewer's ``review/`` stay. One
        log line each; return the job ids cleaned."""
        now = time.time() if now is None else now
        kept = []
        for folder in sorted(self.root.iterdir()):
            inp = folder / "input"
            if folder.is_symlink() or not inp.is_dir():
                continue
            try:
                record = self.get(folder.name)
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if record.state != "done":  # waiting or processing: not the purge's to delete
                continue
            since = record.finished_at or inp.stat().st_mtime
            size = tree_size(inp)[1] + tree_size(folder / "output")[1]
            kept.append((since, record, size))
        cleaned = []
        for record, why in expired(kept, now, self.review_retention_s, self.max_review_bytes,
                                   ("review_retention_s", "max_review_bytes")):  # fmt: skip
            self.clean(record)
            cleaned.append(record.job_id)
            log.info("study %s: job %s images deleted, %s", record.study_key, record.job_id, why)
        return cleaned

    def quarantine(self, record: JobRecord) -> JobRecord:
        """Move a failed job's input to ``quarantine/<job id>/`` with its reason; drop its
        output. With ``retention_s`` 0 the input is deleted, and the log says so."""
        src = self.input_dir(record.job_id)
        if self.retention_s <= 0 or not src.is_dir():
            if src.is_dir():
                log.warning(
                    "study %s: job %s failed; its instances are deleted (failed_retention_s 0)",
                    record.study_key,
                    record.job_id,
                )
            self.clean(record)
            return record
        dest = safe_join(self.quarantine_root, record.job_id)
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest / "reason.txt", f"{record.reason or 'failed'}\n")
        os.replace(src, dest / "input")
        shutil.rmtree(self.output_dir(record.job_id), ignore_errors=True)
        record = self.update(record, quarantined=f"quarantine/{record.job_id}")
        log.warning(
            "study %s: job %s failed; its instances are kept in %s for %.0f h",
            record.study_key,
            record.job_id,
            record.quarantined,
            self.retention_s / 3600,
        )
        return record

    def quarantine_bytes(self) -> int:
        if not self.quarantine_root.is_dir():
            return 0
        return tree_size(self.quarantine_root)[1]

    def purge_quarantine(self, now: float | None = None) -> list[str]:
        """Delete quarantined studies past ``retention_s``, then the oldest beyond
        ``max_quarantine_bytes``; one log line each. Return the job ids deleted."""
        if not self.quarantine_root.is_dir():
            return []
        now = time.time() if now is None else now
        entries = []
        for folder in sorted(self.quarantine_root.iterdir()):
            if folder.is_dir() and not folder.is_symlink():
                entries.append((folder.stat().st_mtime, folder, tree_size(folder)[1]))
        purged = []
        for folder, why in expired(entries, now, self.retention_s, self.max_quarantine_bytes,
                                   ("failed_retention_s", "max_quarantine_bytes")):  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
            purged.append(folder.name)
            log.info("quarantine: deleted the instances of failed job %s: %s", folder.name, why)
        return purged
