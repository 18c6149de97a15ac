"""Atomic file writing: the one place that writes results, checkpoints and images safely.

Every file that must never be seen half-written (checkpoints, NIfTI outputs, evaluation results,
stored DICOM) is written to a temporary file in the destination folder, flushed and fsynced,
then renamed over the destination (``os.replace``, atomic on POSIX). A crash leaves either the
old complete file or the new complete file, plus at worst a hidden ``.name.*.tmp`` that is
removed when the error is seen.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

_UMASK = os.umask(0)
os.umask(_UMASK)
#: Mode of written files: what ``open()`` would create (mkstemp's own 0600 would hide results).
FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it over ``path``.

    For writers that want a file name rather than a file object (``nibabel.save``). ``suffix``
    lets such writers pick the format from the name (``.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(
    path: str | Path, write: Callable[[BinaryIO], object], suffix: str = ".tmp"
) -> Path:
    """Call ``write(binary_file)`` on a temp file, then move it into place atomically."""
    path = Path(path)
    with atomic_path(path, suffix) as tmp, open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
