"""One job per complete study: ``storage/jobs/<job id>/{state.json, input/, output/}``.

``state.json`` (written atomically) is the record a person or a monitor reads: the state
(``received`` → ``processing`` → ``done`` | ``failed``), the reason of a failure, counts and
times. The job id holds a hash of the Study Instance UID, never a patient identifier. The
input is deleted once the study is processed (done or failed); the record stays.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transmed.io.atomic import atomic_write_text
from transmed.service.keys import safe_join, study_log_key

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

    @classmethod
    def from_json(cls, text: str) -> JobRecord:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def new_job_id(study_uid: str) -> str:
    """``<UTC time>-<study hash>-<random>``: sortable by arrival, unique, path-safe."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{study_log_key(study_uid)}-{secrets.token_hex(3)}"


class JobStore:
    """Job folders and their state files (thread-safe)."""

    def __init__(self, storage_dir: Path) -> None:
        self.root = Path(storage_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
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
            elif has_input or (folder / "output").is_dir():  # stopped before its clean-up
                self.clean(record)
        return pending

    def clean(self, record: JobRecord) -> None:
        """Delete the job's input and output (the patient's images); keep ``state.json``."""
        shutil.rmtree(self.input_dir(record.job_id), ignore_errors=True)
        shutil.rmtree(self.output_dir(record.job_id), ignore_errors=True)
