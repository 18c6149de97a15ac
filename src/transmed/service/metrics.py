"""Counters, latency percentiles and gauges of the node, as JSON or Prometheus text.

Counters only grow while the process runs (a restart starts them at zero, as Prometheus
expects); latencies keep the most recent ``window`` samples per name.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

COUNTERS = (
    "associations_accepted",
    "instances_received",
    "instances_refused",
    "studies_received",  # complete studies sealed into a job
    "studies_processed",  # SEG produced and queued for delivery
    "studies_failed",
    "seg_delivered",
    "delivery_failures",  # failed attempts (each retried, unless permanent)
    "delivery_abandoned",  # refused permanently by the destination
)

#: Latency names and what they measure (seconds).
LATENCIES = {
    "processing_s": "worker: job start -> SEG in the outbox (reading, inference, SEG writing)",
    "queue_wait_s": "study complete -> worker starts it",
    "turnaround_s": "study complete -> SEG delivered",
    "total_s": "first instance received -> SEG delivered",
}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated ``q``-th percentile (0–100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Metrics:
    """Thread-safe counters and latency windows; gauges are read from callables at snapshot."""

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.latencies: dict[str, deque[float]] = {k: deque(maxlen=window) for k in LATENCIES}
        self.gauges: dict[str, Callable[[], float | int]] = {}

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            self.latencies.setdefault(name, deque(maxlen=1000)).append(float(seconds))

    def snapshot(self) -> dict[str, Any]:
        """Counters, gauges and p50/p90/p99 (+ count) of every latency."""
        with self._lock:
            counters = dict(self.counters)
            lat = {k: list(v) for k, v in self.latencies.items()}
        gauges = {}
        for name, read in self.gauges.items():
            try:
                gauges[name] = read()
            except Exception:  # a gauge must never break the endpoint
                gauges[name] = None
        latency = {
            name: {"count": len(v), **{f"p{q}": percentile(v, q) for q in (50, 90, 99)}}
            for name, v in lat.items()
        }
        return {
            "uptime_s": round(time.time() - self.started, 3),
            **counters,
            **gauges,
            "latency": latency,
        }

    def prometheus(self) -> str:
        """The snapshot in Prometheus text exposition format (``transmed_`` prefix)."""
        snap = self.snapshot()
        lines = []
        for name in (*self.counters, *self.gauges):
            value = snap.get(name)
            if value is None:
                continue
            kind = "counter" if name in self.counters else "gauge"
            metric = f"transmed_{name}_total" if kind == "counter" else f"transmed_{name}"
            lines += [f"# TYPE {metric} {kind}", f"{metric} {value}"]
        lines.append("# TYPE transmed_latency_seconds summary")
        for name, stats in snap["latency"].items():
            label = name.removesuffix("_s")
            for q in (50, 90, 99):
                if stats[f"p{q}"] is not None:
                    lines.append(
                        f'transmed_latency_seconds{{stage="{label}",quantile="{q / 100}"}} '
                        f"{stats[f'p{q}']:.6f}"
                    )
            lines.append(f'transmed_latency_seconds_count{{stage="{label}"}} {stats["count"]}')
        return "\n".join(lines) + "\n"
