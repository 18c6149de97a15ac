"""Wall-clock timing of repeated calls: medians and interquartile ranges, not means.

A forward on a shared machine has a long right tail (another process wakes up); the median and
IQR describe the typical run without letting one slow outlier move the number.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def summarize_times(times: list[float]) -> dict[str, Any]:
    """Median, quartiles and IQR of run times (seconds).

    Quartiles use ``statistics.quantiles(method="inclusive")`` (linear interpolation between
    order statistics, like ``numpy.percentile``'s default); with one run Q1 = Q3 = the run.

    Raises:
        ValueError: ``times`` is empty or holds a negative value.
    """
    if not times:
        raise ValueError("summarize_times needs at least one run time")
    if min(times) < 0:
        raise ValueError(f"run times must be ≥ 0 s, got {min(times)}")
    if len(times) == 1:
        q1 = q3 = times[0]
    else:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {
        "median_s": statistics.median(times),
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
        "times_s": list(times),
    }


def time_calls(
    fn: Callable[[], Any], repeats: int, sync: Callable[[], None] | None = None
) -> list[float]:
    """Run ``fn`` ``repeats`` times; the seconds each call took (``time.perf_counter``).

    Args:
        fn: the call to time (its result is dropped before the next call starts).
        repeats: number of timed calls, ≥ 1.
        sync: called before starting and before stopping the clock (``torch.cuda.synchronize``
            on a GPU, where kernels run asynchronously).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        start = time.perf_counter()
        out = fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
        del out
    return times
