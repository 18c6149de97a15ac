"""The DICOM reader's error type and the small helpers every stage shares.

Each stage refuses bad input with :class:`DicomError`, naming the file or series, never a
patient identifier; :func:`_show` prints paths relative to the scanned folder for that reason
(the folder is often named after the patient).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException

_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


class DicomError(ValueError):
    """A DICOM file, series or study that cannot be used; the message names the file or series
    and the problem, never a patient identifier."""


#: What interpreting a hostile header value raises besides DicomError: a multi-valued Rows, text
#: in an IS, an integer where a sequence item belongs, a value pydicom cannot decode lazily.
_MALFORMED = (TypeError, ValueError, AttributeError, LookupError, ArithmeticError,
              NotImplementedError, struct.error, BytesLengthException)  # fmt: skip


@contextlib.contextmanager
def malformed_header(where: str) -> Iterator[None]:
    """Turn the errors a malformed header value raises while it is interpreted into a
    :class:`DicomError` naming ``where`` (the type only: a value may identify the patient).

    Found by the DICOM fuzzer (``transmed.bench.dicom_fuzz``); programming errors such as a
    NameError still surface.
    """
    try:
        yield
    except DicomError:
        raise
    except _MALFORMED as exc:
        raise DicomError(
            f"{where}: malformed or undecodable header value ({type(exc).__name__})"
        ) from None


def is_valid_uid(value: object) -> bool:
    """True for a DICOM UID: digits and dots (``^[0-9]+(\\.[0-9]+)*$``), at most 64 chars."""
    # fullmatch: "$" would also accept a trailing newline, and UIDs become file names
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def study_log_key(study_uid: str) -> str:
    """How logs name a study: 12 hex characters of the SHA-256 of its Study Instance UID
    (never a patient identifier; the same study always gets the same key)."""
    return hashlib.sha256(study_uid.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _show(path: Path, root: Path | None) -> str:
    """The path relative to the scanned root (the root folder is often named after the patient)."""
    if root is not None:
        try:
            rel = path.relative_to(root)
            return str(rel) if str(rel) != "." else path.name
        except ValueError:
            pass
    return str(path)


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of ``ds``'s ``sequence``, or ``None`` (no data set, absent or empty)."""
    seq = ds.get(sequence) if ds is not None else None
    return seq[0] if seq else None
