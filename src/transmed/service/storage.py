"""Where received instances wait: ``storage/incoming/<study>/<series>/<sop>.dcm``.

Every path component is a validated UID (:mod:`transmed.service.keys`), every joined path is
checked to resolve inside the storage directory, and every file is written to a temp file and
renamed (:mod:`transmed.io.atomic`), so a crash or a refused instance never leaves a partial
file. A :class:`DiskBudget` caps the bytes waiting on disk (incoming + queued studies); at the
cap, C-STORE answers "out of resources" instead of filling the disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transmed.io.atomic import atomic_write_bytes, atomic_write_text
from transmed.service.config import LimitsConfig
from transmed.service.keys import UnsafeName, is_valid_uid, safe_join, study_log_key, uid_key
from transmed.service.validation import InstanceRefused, Status

log = logging.getLogger(__name__)


class DiskBudget:
    """Bytes the node may hold on disk for studies not yet processed (thread-safe)."""

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit = limit
        self.used = used
        self._lock = threading.Lock()

    def try_reserve(self, n: int) -> bool:
        with self._lock:
            if n > 0 and self.used + n > self.limit:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


@dataclass
class _Tally:
    bytes: int = 0
    instances: int = 0
    first_received_at: float = 0.0  # epoch seconds
    refused: str | None = None  # why the rest of the study is refused


@dataclass(frozen=True)
class SealedStudy:
    """A study moved out of ``incoming`` as a whole (see :meth:`IncomingStore.seal`)."""

    study_uid: str
    path: Path
    instances: int
    bytes: int
    first_received_at: float
    refused: str | None


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) of the regular files under ``path`` (symlinks not followed)."""
    files = size = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
    return files, size


class IncomingStore:
    """Received instances, one folder per study, until the study is sealed for a job."""

    def __init__(self, storage_dir: Path, limits: LimitsConfig, budget: DiskBudget) -> None:
        self.root = Path(storage_dir)
        self.incoming = self.root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self.budget = budget
        self._lock = threading.Lock()
        self._studies: dict[str, _Tally] = {}

    def put(self, ds: Any, raw: bytes) -> str:
        """Write one validated instance (``raw``: its bytes with file meta); return its study UID.

        A re-sent instance (same SOP Instance UID) replaces the earlier copy.

        Raises:
            InstanceRefused: unsafe UID, study or storage caps reached, or the write failed.
        """
        try:
            study = uid_key(str(ds.StudyInstanceUID), "StudyInstanceUID")
            series = uid_key(str(ds.SeriesInstanceUID), "SeriesInstanceUID")
            sop = uid_key(str(ds.SOPInstanceUID), "SOPInstanceUID")
            path = safe_join(self.incoming, study, series, f"{sop}.dcm")
        except (UnsafeName, AttributeError) as exc:
            raise InstanceRefused(Status.UNSAFE_UID, str(exc)) from None
        with self._lock:
            tally = self._studies.setdefault(study, _Tally(first_received_at=time.time()))
            if tally.refused:
                raise InstanceRefused(Status.STUDY_CAP, f"study refused earlier: {tally.refused}")
            previous = path.stat().st_size if path.is_file() else 0
            new_instances = tally.instances + (0 if previous else 1)
            new_bytes = tally.bytes + len(raw) - previous
            reason = None
            if new_bytes > self.limits.max_study_bytes:
                reason = f"study exceeds max_study_bytes {self.limits.max_study_bytes}"
            elif new_instances > self.limits.max_study_instances:
                reason = f"study exceeds max_study_instances {self.limits.max_study_instances}"
            if reason and tally.instances == 0:  # nothing stored yet: nothing to fail later
                del self._studies[study]
                raise InstanceRefused(Status.STUDY_CAP, reason)
            if reason:
                tally.refused = reason
                atomic_write_text(self.incoming / f"{study}.refused", reason + "\n")
                raise InstanceRefused(Status.STUDY_CAP, reason)
            if not self.budget.try_reserve(len(raw) - previous):
                if tally.instances == 0:
                    del self._studies[study]
                raise InstanceRefused(
                    Status.OUT_OF_RESOURCES,
                    f"storage holds {self.budget.used} bytes, max_storage_bytes "
                    f"{self.budget.limit}",
                )
            try:
                atomic_write_bytes(path, raw)
            except OSError as exc:
                self.budget.release(len(raw) - previous)
                if tally.instances == 0:
                    del self._studies[study]
                raise InstanceRefused(
                    Status.OUT_OF_RESOURCES, f"cannot write ({exc.strerror})"
                ) from None
            tally.instances, tally.bytes = new_instances, new_bytes
        return study

    def seal(self, study_uid: str, dest: Path) -> SealedStudy | None:
        """Move the study's folder to ``dest`` (same file system: one rename); ``None`` if the
        study has no folder (already sealed). Instances arriving later start a new folder."""
        src = safe_join(self.incoming, uid_key(study_uid))
        marker = self.incoming / f"{study_uid}.refused"
        with self._lock:
            tally = self._studies.pop(study_uid, None)
            if not src.is_dir():
                return None
            if tally is None:  # not seen since a restart
                files, size = tree_size(src)
                tally = _Tally(size, files, src.stat().st_mtime)
            if tally.refused is None and marker.is_file():
                tally.refused = marker.read_text(encoding="utf-8").strip()
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            marker.unlink(missing_ok=True)
        return SealedStudy(
            study_uid, dest, tally.instances, tally.bytes, tally.first_received_at, tally.refused
        )

    def recover(self) -> list[str]:
        """After a restart: drop temp files a crash left, remove what the node did not write,
        count the bytes still waiting; return the study UIDs with a folder in ``incoming``.

        Each recovered study is tallied as if received in this run, so instances that arrive
        for it (a sender resending what was not acknowledged) join the same study and its
        counts and bytes stay right."""
        studies = []
        for entry in sorted(self.incoming.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and is_valid_uid(entry.name):
                for tmp in entry.rglob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                    log.warning(
                        "removed an interrupted write in study %s", study_log_key(entry.name)
                    )
                studies.append(entry.name)
                files, size = tree_size(entry)
                self.budget.try_reserve(size)
                marker = self.incoming / f"{entry.name}.refused"
                refused = marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
                with self._lock:
                    self._studies[entry.name] = _Tally(size, files, entry.stat().st_mtime, refused)
            elif entry.suffix == ".refused" and is_valid_uid(entry.stem):
                continue
            else:
                log.warning("removing unexpected entry %r from incoming/", entry.name[:40])
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        return studies

    def waiting_instances(self) -> int:
        with self._lock:
            return sum(t.instances for t in self._studies.values())
