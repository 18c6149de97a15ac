"""Dynamic convolution overhead: ``DynamicConv3d`` against ``nn.Conv3d`` of the same shape.

Target (foundation issue): at batch size 1 the dynamic convolution's forward costs within 10% of
a static convolution of the same shape. Both run interleaved in one process, so machine noise
hits both alike; the median of the per-pair ratios is reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from transmed.models.layers import DynamicConv3d

#: (channels, grid edge): the TransMed stages for a 128³ patch.
DEFAULT_CASES: tuple[tuple[int, int], ...] = ((24, 64), (48, 32), (96, 16), (192, 8))


@dataclass
class DynConvResult:
    channels: int
    grid: int
    batch: int
    static_ms: float
    dynamic_ms: float
    ratio: float  # median over interleaved pairs of dynamic / static


def measure_dynamic_conv(
    channels: int, grid: int, batch: int = 1, repeats: int = 20, num_kernels: int = 4
) -> DynConvResult:
    """Median forward times (ms) of a static and a dynamic 3×3×3 conv, run interleaved."""
    if repeats < 1 or channels < 1 or grid < 1 or batch < 1:
        raise ValueError("channels, grid, batch and repeats must be ≥ 1")
    x = torch.randn(batch, channels, grid, grid, grid)
    static = nn.Conv3d(channels, channels, 3, padding=1, bias=False).eval()
    dynamic = DynamicConv3d(channels, channels, 3, bias=False, num_kernels=num_kernels).eval()
    t_static, t_dynamic = [], []
    with torch.inference_mode():
        static(x), dynamic(x)  # warm-up
        for _ in range(repeats):
            for module, times in ((static, t_static), (dynamic, t_dynamic)):
                t0 = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - t0)
    ratios = [d / s for d, s in zip(t_dynamic, t_static, strict=True)]
    return DynConvResult(
        channels, grid, batch,
        statistics.median(t_static) * 1e3, statistics.median(t_dynamic) * 1e3,
        statistics.median(ratios),
    )  # fmt: skip


def run_dynamic_conv_benchmark(
    cases: tuple[tuple[int, int], ...] = DEFAULT_CASES, batches: tuple[int, ...] = (1, 2),
    repeats: int = 20,
) -> list[dict]:
    """All cases × batch sizes, as JSON-ready dicts."""
    return [
        asdict(measure_dynamic_conv(c, g, b, repeats)) for b in batches for c, g in cases
    ]


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| batch | channels | grid | static (ms) | dynamic (ms) | dynamic / static |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['channels']} | {r['grid']}³ | {r['static_ms']:.1f} | "
            f"{r['dynamic_ms']:.1f} | {r['ratio']:.3f} |"
        )
    return "\n".join(lines)
