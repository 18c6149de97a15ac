"""Peak-memory probes for one process: resident set size (CPU) or the CUDA caching allocator.

Why RSS, and why this way: on CPU, PyTorch allocates through the system allocator, so the
operating system's resident set size is the honest measure of what a forward pass really needs.
Linux keeps a high-water mark of it (``VmHWM``); writing ``5`` to ``/proc/self/clear_refs``
resets that mark to the current RSS, so after building the model and input we can reset it and
read the peak of the forwards alone. Where the reset is not allowed, ``getrusage``'s
``ru_maxrss`` (peak over the process's life) is the fallback, and the result says so.

A :class:`MemoryProbe` is meant to run in a fresh child process (see
:mod:`transmed.bench.isolation`) so that nothing measured before can hide in the peak. It lives
in ``inference`` because the predictor's memory estimate (:mod:`.memory`) uses it; the
benchmarks reach it as ``transmed.bench.memory``.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from typing import Any


def meminfo_bytes(field: str, path: str = "/proc/meminfo") -> int | None:
    """One field of ``/proc/meminfo`` (e.g. ``"MemAvailable"``) in bytes, ``None`` if absent."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key.strip() == field:
                    parts = rest.split()
                    scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                    return int(parts[0]) * scale
    except (OSError, ValueError, IndexError):
        return None
    return None


def _status_bytes(field: str) -> int | None:
    # /proc/self/status has the same "Key:   123 kB" format as /proc/meminfo.
    return meminfo_bytes(field, "/proc/self/status")


def current_rss_bytes() -> int:
    """Resident set size of this process now (bytes)."""
    rss = _status_bytes("VmRSS")
    if rss is not None:
        return rss
    return peak_rss_bytes()  # no /proc: the best we have


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS (bytes): ``VmHWM``, else ``ru_maxrss``."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    # ru_maxrss is in KiB on Linux (bytes on macOS, where there is no /proc).
    import sys

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to the current RSS; ``False`` if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryReport:
    """Memory of one measured forward, in bytes.

    Attributes:
        method: ``"rss-hwm-reset"`` (VmHWM reset after the build), ``"ru_maxrss"`` (peak over the
            process's life, may include the build) or ``"cuda-allocator"``.
        runtime_bytes: before the model was built (Python + torch + libraries; CUDA: 0).
        baseline_bytes: after model and input were built, before the first forward.
        peak_bytes: the process's (or allocator's) peak during the forwards.
        forward_peak_bytes: ``peak − baseline``: the working memory a forward needs on top of
            its weights and input.
    """

    method: str
    runtime_bytes: int
    baseline_bytes: int
    peak_bytes: int
    forward_peak_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryProbe:
    """Memory at three points: ``runtime()``, build, ``baseline()``, forwards, ``report()``.

    Args:
        device: ``"cpu"`` (RSS) or a CUDA device (``torch.cuda.max_memory_allocated``).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = str(device).startswith("cuda")
        self.device = device
        self._runtime = 0
        self._baseline = 0
        self._reset_ok = False

    def _now(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            return int(torch.cuda.memory_allocated(self.device))
        return current_rss_bytes()

    def runtime(self) -> None:
        """Call before building the model."""
        self._runtime = self._now()

    def baseline(self) -> None:
        """Call after building model and input, right before the forwards; resets the peak."""
        self._baseline = self._now()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self._reset_ok = True
        else:
            self._reset_ok = reset_peak_rss()

    def report(self) -> MemoryReport:
        """Call after the forwards."""
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
            method = "cuda-allocator"
        else:
            peak = peak_rss_bytes()
            method = "rss-hwm-reset" if self._reset_ok else "ru_maxrss"
        peak = max(peak, self._baseline)
        return MemoryReport(
            method=method,
            runtime_bytes=self._runtime,
            baseline_bytes=self._baseline,
            peak_bytes=peak,
            forward_peak_bytes=peak - self._baseline,
        )
