"""Summaries, paired tests and the bootstrap CI on data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from transmed.evaluation.statistics import bootstrap_ci, paired_tests, summarise


def test_summarise_known_values_and_nan_handling() -> None:
    s = summarise([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert s.n == 4
    assert s.mean == pytest.approx(2.5)
    assert s.sd == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s.median == pytest.approx(2.5)
    one = summarise([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.sd)
    assert one.as_dict()["sd"] is None
    assert summarise([]).n == 0 and math.isnan(summarise([]).mean)


def test_paired_tests_agree_with_scipy() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0.80, 0.05, 25)
    b = a - rng.normal(0.01, 0.03, 25)
    out = paired_tests(a, b)
    assert out["n"] == 25
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert out["ttest_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert out["mean_diff"] == pytest.approx(np.mean(a - b))
    assert out["median_diff"] == pytest.approx(np.median(a - b))
    assert out["mean_a"] == pytest.approx(a.mean()) and out["mean_b"] == pytest.approx(b.mean())


def test_clear_difference_is_significant_and_ci_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    b = rng.uniform(0.6, 0.9, 30)
    a = b + 0.05 + rng.normal(0, 0.01, 30)  # A better on every case
    out = paired_tests(a, b)
    assert out["wilcoxon_p"] < 0.05 and out["ttest_p"] < 0.05
    assert 0.0 < out["ci_low"] < 0.05 < out["ci_high"]
    same_direction = paired_tests(b, a)  # sign follows a - b
    assert same_direction["mean_diff"] == pytest.approx(-out["mean_diff"])
    assert same_direction["ci_high"] < 0.0


def test_identical_arrays_give_p_one_and_zero_ci() -> None:
    a = np.array([0.8, 0.7, 0.9, 0.85, 0.6, 0.75, 0.95])
    out = paired_tests(a, a.copy())
    assert out["wilcoxon_p"] == 1.0 and out["ttest_p"] == 1.0
    assert (out["ci_low"], out["ci_high"]) == (0.0, 0.0)
    assert any("zero" in note for note in out["notes"])


def test_small_samples_and_degenerate_differences() -> None:
    a = np.array([0.9, 0.8, 0.85, 0.7, 0.75])
    out = paired_tests(a, a - 0.1 * np.arange(1, 6))  # 5 non-zero differences, all positive
    assert out["wilcoxon_p"] == pytest.approx(0.0625)  # the smallest two-sided exact p for n=5
    assert any("cannot fall below" in note for note in out["notes"])
    constant = paired_tests(a, a - 0.1)
    assert constant["ttest_p"] == 0.0
    single = paired_tests([0.5], [0.4])
    assert single["n"] == 1 and math.isnan(single["wilcoxon_p"]) and math.isnan(single["ci_low"])


def test_nan_pairs_are_dropped_and_bad_input_refused() -> None:
    a = [0.9, float("nan"), 0.8, 0.7, 0.6, 0.5, 0.4]
    b = [0.8, 0.5, float("nan"), 0.6, 0.55, 0.45, 0.3]
    out = paired_tests(a, b)
    assert out["n"] == 5
    assert any("NaN" in note for note in out["notes"])
    with pytest.raises(ValueError, match="same number"):
        paired_tests([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="infinite"):
        paired_tests([1.0, float("inf")], [1.0, 2.0])


def test_bootstrap_ci_covers_true_mean_and_is_reproducible() -> None:
    rng = np.random.default_rng(42)
    diff = rng.normal(0.3, 1.0, 200)  # true mean difference 0.3
    low, high = bootstrap_ci(diff, n_resamples=5000, seed=0)
    assert low < 0.3 < high
    assert low < diff.mean() < high
    # Width close to the normal-theory interval 2 * 1.96 * s / sqrt(n).
    assert high - low == pytest.approx(2 * 1.96 * diff.std(ddof=1) / np.sqrt(200), rel=0.1)
    assert bootstrap_ci(diff, n_resamples=5000, seed=0) == (low, high)
    assert bootstrap_ci(diff, n_resamples=5000, seed=1) != (low, high)
    ref = stats.bootstrap((diff,), np.mean, n_resamples=5000, method="percentile",
                          random_state=0).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.03) and high == pytest.approx(ref.high, abs=0.03)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(diff, confidence=1.5)
