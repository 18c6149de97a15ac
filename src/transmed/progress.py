"""Progress bars that suit where they are written: a live tqdm bar on a terminal, a plain
periodic line in a log file or pipe (CI logs, ``nohup``), where tqdm's carriage-return updates
would pile up as one log line per update.

Use :func:`progress_bar` wherever a person waits (STYLE.md, habit 7) instead of ``tqdm``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

#: Seconds between two plain lines when the output is not a terminal.
LOG_INTERVAL_S = 30.0
_LOG_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:3.0f}%) [{elapsed}<{remaining}]{postfix}"
)


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


class _Lines:
    """A stream wrapper that drops tqdm's bare ``\r``/``\n`` writes (cursor moves)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text) if text.strip() else 0

    def flush(self) -> None:
        self.stream.flush()


class LogLineBar(tqdm):  # type: ignore[type-arg]
    """A tqdm whose every refresh is one complete line (``\\n``, no ``\\r``), at most every
    ``mininterval`` seconds, plus the final state when it closes."""

    _last_line: str | None = None
    _last_print: float | None = None
    _closing = False

    def close(self) -> None:
        self._closing = True  # the final state is always shown
        super().close()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.fp is None:
            return True
        now = self._time()
        # set_postfix() and refresh() display at every call: throttle them here too
        if self._last_print is not None and not self._closing:
            if now - self._last_print < self.mininterval:
                return True
        self._last_print = now
        d = self.format_dict
        if d["total"] is None:  # unknown length: no percentage or remaining time
            d = {**d, "bar_format": "{desc}: {n_fmt} {unit} [{elapsed}]{postfix}"}
        line = msg if msg is not None else self.format_meter(**d)
        if line and line != self._last_line:  # close() re-displays the last state
            self.fp.write(line.strip() + "\n")
            self.fp.flush()
            self._last_line = line
        return True


def progress_bar(
    iterable: Iterable[Any] | None = None, *, file: IO[str] | None = None, **kwargs: Any
) -> tqdm:  # type: ignore[type-arg]
    """``tqdm(iterable, **kwargs)`` on a terminal; elsewhere a :class:`LogLineBar` that prints
    one plain line every :data:`LOG_INTERVAL_S` seconds (``mininterval`` overrides it).

    ``disable=None`` keeps tqdm's meaning (hidden unless the output is a terminal).
    """
    stream = file if file is not None else sys.stderr
    if _is_terminal(stream) or kwargs.get("disable") is None and "disable" in kwargs:
        return tqdm(iterable, file=stream, **kwargs)
    interval = kwargs.pop("mininterval", LOG_INTERVAL_S)
    for key in ("dynamic_ncols", "ncols", "ascii", "colour"):  # terminal-only settings
        kwargs.pop(key, None)
    kwargs.setdefault("unit", "it")
    return LogLineBar(
        iterable, file=_Lines(stream), mininterval=interval, maxinterval=max(interval, 1.0),
        bar_format=kwargs.pop("bar_format", _LOG_FORMAT), **kwargs,
    )  # fmt: skip
