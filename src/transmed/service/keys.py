"""Names on disk and in logs for things that arrive over the network.

Nothing a peer sends becomes a path component unvalidated: a UID is used as a folder or file
name only when it matches the DICOM UID grammar (digits and dots, at most 64 characters), and
every joined path is checked to resolve inside its root. Logs name a study by a short hash of
its Study Instance UID, so a log line can be matched to the study's state file without printing
anything from the patient's record.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transmed.io.dicom.errors import is_valid_uid, study_log_key  # noqa: F401 (re-exported)


class UnsafeName(ValueError):
    """A value that cannot be used as a name on disk."""


def uid_key(value: object, what: str = "UID") -> str:
    """``value`` itself if it is a valid UID, else :class:`UnsafeName` (the value is not echoed).

    Raises:
        UnsafeName: not a valid UID (the message never contains the value: it came from the
            network and may be anything, including text meant for a log).
    """
    if not is_valid_uid(value):
        raise UnsafeName(f"{what} is not a valid DICOM UID (digits and dots, ≤ 64 characters)")
    return str(value)


def hashed_key(value: str, length: int = 16) -> str:
    """A path- and log-safe stand-in for any string: ``h`` + hex SHA-256 prefix."""
    return "h" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def safe_join(root: Path, *parts: str) -> Path:
    """``root / parts...``, refused unless every part is a plain name and the result stays
    inside ``root`` after resolving symlinks.

    Raises:
        UnsafeName: a part is empty, ``.``/``..``, holds a separator or NUL, or the resolved
            path escapes ``root``.
    """
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part or "\0" in part:
            raise UnsafeName("path component is not a plain name")
    root_resolved = root.resolve()
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root_resolved):
        raise UnsafeName("path resolves outside the storage directory")
    return path
