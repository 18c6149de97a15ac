from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transmed.bench.flops import count_flops
from transmed.bench.timing import summarize_times, time_calls


@pytest.mark.parametrize(
    ("cin", "cout", "k", "padding", "size"),
    [(4, 8, 3, 1, (16, 16, 16)), (2, 5, 3, 0, (9, 10, 11)), (3, 7, 1, 0, (4, 6, 8))],
)
def test_conv3d_flops_equal_analytic_count(
    cin: int, cout: int, k: int, padding: int, size: tuple[int, int, int]
) -> None:
    conv = nn.Conv3d(cin, cout, k, padding=padding)
    x = torch.randn(1, cin, *size)
    out = [s + 2 * padding - k + 1 for s in size]
    # multiply-add = 2 FLOPs, bias not counted (PyTorch's convention)
    assert count_flops(conv, x) == 2 * cin * cout * k**3 * math.prod(out)


def test_full_attention_flops_count_the_cpu_fused_kernel() -> None:
    from transmed.bench.attention_scaling import FullAttentionBlock3d

    c, n = 32, 8**3
    block = FullAttentionBlock3d(c, num_heads=4).eval()
    linear = 2 * n * c * (3 * c + c + 2 * c + 2 * c)  # qkv, proj, MLP up and down
    attention = 2 * 2 * n * n * c  # Q·Kᵀ and scores·V over all heads
    assert count_flops(block, torch.randn(1, c, 8, 8, 8)) == linear + attention


def test_summarize_times_median_and_iqr() -> None:
    s = summarize_times([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median_s"], s["q1_s"], s["q3_s"], s["iqr_s"]) == (3.0, 2.0, 4.0, 2.0)
    assert s["runs"] == 5
    one = summarize_times([0.5])
    assert one["median_s"] == one["q1_s"] == one["q3_s"] == 0.5 and one["iqr_s"] == 0.0


@pytest.mark.parametrize("times", [[], [1.0, -0.1]])
def test_summarize_times_rejects_bad_input(times: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize_times(times)


def test_time_calls_runs_repeats_times() -> None:
    calls = []
    times = time_calls(lambda: calls.append(1), 4)
    assert len(times) == 4 and len(calls) == 4 and all(t >= 0 for t in times)
    with pytest.raises(ValueError, match="repeats"):
        time_calls(lambda: None, 0)
