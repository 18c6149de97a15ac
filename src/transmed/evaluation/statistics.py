"""Summaries of per-case metric values and paired tests between two methods on the same cases.

Used by ``transmed evaluate`` (summary JSON) and ``transmed compare`` (method A vs B, case by
case). Conventions, chosen so that degenerate inputs give a defined answer instead of a scipy
warning:

- NaN values are ignored by :func:`summarise`; :func:`paired_tests` drops pairs with a NaN on
  either side and reports the number of pairs used as ``n``.
- Identical samples (all differences 0): Wilcoxon p = 1 and t-test p = 1 (no evidence of a
  difference; scipy would give NaN for the t-test).
- A constant non-zero difference: t-test p = 0 (t = ±inf, as scipy); Wilcoxon as scipy.
- Wilcoxon uses Wilcoxon's zero handling (zero differences are dropped, scipy's default) and
  scipy's ``method="auto"`` (exact null distribution for small samples without ties). With fewer
  than 6 non-zero differences the two-sided exact p-value cannot fall below 2 / 2^5 = 0.0625, so
  the test can never reach p < 0.05; it is still reported, with a note in ``"notes"``.
- Fewer than 2 pairs: both p-values and the CI are NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats


class Summary(NamedTuple):
    """Mean, sample standard deviation (ddof = 1), median and count of the finite values."""

    mean: float
    sd: float
    median: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-friendly: NaN becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in self._asdict().items()}


def _vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{name}: contains infinite values")
    return arr


def summarise(values: Sequence[float] | np.ndarray) -> Summary:
    """:class:`Summary` of the finite entries of ``values`` (NaN ignored).

    ``sd`` is NaN for fewer than 2 values; everything but ``n`` is NaN for none.
    """
    arr = _vector(values, "values")
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0)
    sd = float(np.std(arr, ddof=1)) if n > 1 else math.nan
    return Summary(float(np.mean(arr)), sd, float(np.median(arr)), n)


def bootstrap_ci(
    diff: Sequence[float] | np.ndarray,
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``diff``.

    Resamples cases with replacement ``n_resamples`` times (numpy ``default_rng(seed)``, so a
    seed gives the same interval) and returns the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of the resampled means. The percentile method rather
    than scipy's BCa: BCa's jackknife is undefined for constant samples, common here (all-zero
    differences), where the percentile interval is simply ``(c, c)``.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for fewer than 2 finite values.
    """
    arr = _vector(diff, "diff")
    arr = arr[~np.isnan(arr)]
    if n_resamples < 1:
        raise ValueError(f"n_resamples: expected ≥ 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
    n = arr.size
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bound the (chunk, n) index array to ~16 MB
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_tests(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, float | int | list[str]]:
    """Paired comparison of two methods' per-case values (same cases, same order).

    Args:
        a, b: 1-D per-case values (e.g. Dice of methods A and B on each case).
        n_resamples, seed: bootstrap settings of the CI (see :func:`bootstrap_ci`).

    Returns:
        ``{"n", "mean_a", "mean_b", "mean_diff", "median_diff", "ci_low", "ci_high",
        "wilcoxon_p", "ttest_p", "notes"}`` with differences taken as ``a - b``, a 95%
        bootstrap CI of the mean difference, the two-sided Wilcoxon signed-rank and paired
        t-test p-values, and notes on any degenerate case (see the module doc).

    Raises:
        ValueError: if ``a`` and ``b`` differ in length or hold infinite values.
    """
    x = _vector(a, "a")
    y = _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b: expected the same number of cases, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    notes: list[str] = []
    if not keep.all():
        notes.append(f"{int((~keep).sum())} pair(s) with NaN dropped")
    x, y = x[keep], y[keep]
    d = x - y
    n = int(d.size)
    result: dict[str, float | int | list[str]] = {
        "n": n,
        "mean_a": float(x.mean()) if n else math.nan,
        "mean_b": float(y.mean()) if n else math.nan,
        "mean_diff": float(d.mean()) if n else math.nan,
        "median_diff": float(np.median(d)) if n else math.nan,
        "wilcoxon_p": math.nan,
        "ttest_p": math.nan,
        "notes": notes,
    }
    ci_low, ci_high = bootstrap_ci(d, n_resamples=n_resamples, seed=seed)
    result["ci_low"], result["ci_high"] = ci_low, ci_high
    if n < 2:
        notes.append(f"n = {n} < 2: no test")
        return result
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        notes.append("all differences are zero")
        result["wilcoxon_p"] = result["ttest_p"] = 1.0
        return result
    if nonzero < 6:
        notes.append(
            f"only {nonzero} non-zero differences: the Wilcoxon p-value cannot fall below "
            f"{2.0 / 2**nonzero:.4g}"
        )
    with warnings.catch_warnings():
        # scipy warns about exact-vs-normal switching and precision on tiny samples; the
        # degenerate cases are handled above and reported in `notes`.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        result["wilcoxon_p"] = float(stats.wilcoxon(x, y).pvalue)
        if np.all(d == d[0]):
            notes.append("constant non-zero difference: t = ±inf")
            result["ttest_p"] = 0.0
        else:
            result["ttest_p"] = float(stats.ttest_rel(x, y).pvalue)
    return result
