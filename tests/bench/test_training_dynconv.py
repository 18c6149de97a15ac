"""The training-step and dynamic-convolution benchmarks run and write their results."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from transmed.bench.dynamic_conv import measure_dynamic_conv
from transmed.cli import app

runner = CliRunner()


def test_dynamic_conv_measurement_is_sane() -> None:
    r = measure_dynamic_conv(8, 12, batch=2, repeats=3)
    assert r.static_ms > 0 and r.dynamic_ms > 0 and 0.2 < r.ratio < 20


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
    assert rows[True]["memory_ratio"] > 0 and rows[False]["time_ratio"] == 1.0
    assert "checkpointing" in (tmp_path / "training_step.md").read_text()
