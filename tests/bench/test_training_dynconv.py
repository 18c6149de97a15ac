"""The training-step and dynamic-convolution benchmarks run and write their results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from transmed.bench import dynamic_conv
from transmed.bench.dynamic_conv import measure_dynamic_conv
from transmed.cli import app

runner = CliRunner()


class _Clock:
    """A fake ``time.perf_counter`` that only the fake convolutions advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _timed(clock: _Clock, costs: list[float]):  # type: ignore[no-untyped-def]
    """A module class whose n-th forward takes ``costs[n % len(costs)]`` seconds."""

    class Timed(torch.nn.Module):
        calls = 0

        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            clock.now += costs[Timed.calls % len(costs)]
            Timed.calls += 1
            return x

    return Timed


def test_dynamic_conv_reports_medians_in_ms_and_the_median_pair_ratio(monkeypatch) -> None:
    """Static forwards take 1, 2, 4 ms, dynamic ones 3, 2, 12 ms (after one warm-up each):
    medians 2 and 3 ms, pair ratios 3, 1, 3 → median 3 (not 3 / 2 = the ratio of medians)."""
    clock = _Clock()
    monkeypatch.setattr(dynamic_conv, "time", clock)
    monkeypatch.setattr(dynamic_conv.nn, "Conv3d", _timed(clock, [0.0, 1e-3, 2e-3, 4e-3]))
    monkeypatch.setattr(dynamic_conv, "DynamicConv3d", _timed(clock, [0.0, 3e-3, 2e-3, 12e-3]))
    r = measure_dynamic_conv(4, 4, batch=1, repeats=3)
    assert r.static_ms == pytest.approx(2.0) and r.dynamic_ms == pytest.approx(3.0)
    assert r.ratio == pytest.approx(3.0)


def test_dynamic_conv_measurement_runs_the_real_layers() -> None:
    r = measure_dynamic_conv(8, 12, batch=2, repeats=3)
    assert r.static_ms > 0 and r.dynamic_ms > 0
    assert r.ratio > 0 and (r.channels, r.grid, r.batch) == (8, 12, 2)
    with pytest.raises(ValueError, match="repeats"):
        measure_dynamic_conv(8, 12, repeats=0)


def test_training_benchmark_cli(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["bench", "training", "--models", "unet", "--patch", "32", "--batch", "1", "--steps", "1",
         "--rounds", "1", "--precisions", "fp32", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "training_step.json").read_text())
    rows = {r["grad_checkpointing"]: r for r in data["rows"]}
    assert set(rows) == {False, True}
    on, off = rows[True], rows[False]
    for r in (on, off):  # each child measured its own peak after its own runtime and warm-up
        assert r["peak_bytes"] >= r["baseline_bytes"] > 0 and r["step_s"] > 0
        assert r["memory_method"] in ("rss-hwm-reset", "ru_maxrss")
    # ratios are against checkpointing off, fp32
    assert on["time_ratio"] == pytest.approx(on["step_s"] / off["step_s"])
    assert on["memory_ratio"] == pytest.approx(on["peak_bytes"] / off["peak_bytes"])
    assert on["allocated_ratio"] == pytest.approx(
        on["allocated_peak_bytes"] / off["allocated_peak_bytes"]
    )
    md = (tmp_path / "training_step.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| unet | on | fp32"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:5] == [f"{on['step_s']:.2f}", f"{on['time_ratio']:.2f}"]
    assert cells[6] == f"{on['memory_ratio']:.2f}"
