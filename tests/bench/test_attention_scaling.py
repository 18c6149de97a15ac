from __future__ import annotations

import json
import math

import pytest
import torch

from transmed.bench.attention_scaling import (
    FullAttentionBlock3d,
    attention_markdown,
    grid_sides,
    plan_size,
    predict_memory,
    score_bytes,
    score_count,
)

HEADS, CHANNELS = 4, 32


def test_full_attention_block_matches_explicit_softmax_attention() -> None:
    block = FullAttentionBlock3d(8, num_heads=2).eval()
    x = torch.randn(1, 8, 2, 3, 4)  # (B, C, D, H, W)
    with torch.no_grad():
        y = block(x)
        t = x.flatten(2).transpose(1, 2)  # (1, N, C)
        q, k, v = block.qkv(block.norm1(t)).reshape(1, 24, 3, 2, 4).permute(2, 0, 3, 1, 4)
        q = (q - q.mean(-1, keepdim=True)) / (q.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        k = (k - k.mean(-1, keepdim=True)) / (k.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v  # sqrt(head_dim 4) = 2
        t = t + block.proj(a.transpose(1, 2).reshape(1, 24, 8))
        t = t + block.mlp(block.norm2(t))
    assert y.shape == x.shape
    torch.testing.assert_close(y, t.transpose(1, 2).reshape(x.shape), atol=1e-5, rtol=1e-5)


def test_score_counts_and_the_128_cubed_reduction() -> None:
    assert score_count("full", (8, 8, 8)) == 512**2
    assert score_count("axial", (8, 4, 2)) == 64 * 14
    ratio = score_count("full", (128,) * 3) / score_count("axial", (128,) * 3)
    assert ratio == pytest.approx(128**3 / 384) and round(ratio) == 5461
    assert score_bytes("full", (8, 8, 8), HEADS) == 512**2 * HEADS * 4
    with pytest.raises(ValueError, match="kind"):
        score_count("local", (8, 8, 8))


def _measured(kind: str, side: int, work: float, median_s: float) -> dict:
    return {
        "status": "ok",
        "kind": kind,
        "grid": [side] * 3,
        "latency": {"median_s": median_s},
        "memory": {"forward_peak_bytes": int(work)},
    }


def test_predict_memory_recovers_linear_plus_quadratic_terms() -> None:
    a, b = 3000.0, 0.25  # bytes per token, resident fraction of the score matrix

    def w(side: int) -> float:
        return a * side**3 + b * score_bytes("full", (side,) * 3, HEADS)

    hist = [_measured("full", s, w(s), 1.0) for s in (16, 24)]
    pred = predict_memory("full", (48,) * 3, HEADS, CHANNELS, hist)
    assert pred == pytest.approx(w(48), rel=1e-6)
    # a fused kernel: memory only linear in N -> no N² blow-up in the prediction
    lin = [_measured("full", s, a * s**3, 1.0) for s in (16, 24)]
    assert predict_memory("full", (64,) * 3, HEADS, CHANNELS, lin) == pytest.approx(a * 64**3)


def test_plan_size_skips_on_memory_and_on_time() -> None:
    first = plan_size(
        "full", (8,) * 3, HEADS, CHANNELS, [], memory_limit_bytes=2**20, time_limit_s=10
    )
    assert not first["run"] and first["reason"].startswith("skipped: would need")
    assert first["predicted_bytes"] >= score_bytes("full", (8,) * 3, HEADS)

    hist = [_measured("full", 16, 50 * 2**20, 0.5)]
    slow = plan_size("full", (32,) * 3, HEADS, CHANNELS, hist, 2**40, time_limit_s=10)
    # N² growth 16³ -> 32³ is 64×: 0.5 s -> 32 s
    assert not slow["run"] and "32 s" in slow["reason"] and "limit 10 s" in slow["reason"]
    assert slow["predicted_s"] == pytest.approx(32.0)
    fine = plan_size("full", (24,) * 3, HEADS, CHANNELS, hist, 2**40, time_limit_s=10)
    assert fine["run"] and fine["reason"] is None


def test_grid_sides() -> None:
    assert grid_sides(64) == [8, 16, 24, 32, 48, 64]
    assert grid_sides(16) == [8, 16]
    assert grid_sides(40) == [8, 16, 24, 32, 40]
    with pytest.raises(ValueError, match="scaling-max"):
        grid_sides(4)


def test_cli_attention_skips_full_attention_under_a_tiny_memory_limit(tmp_path) -> None:
    from typer.testing import CliRunner

    from transmed.cli import app

    # 3 MiB: the axial block at 8³ fits (~1 MiB predicted), full attention's 8³ scores (4 MiB)
    # do not, so every full-attention size must be reported as skipped, none run.
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "attention",
            "--scaling-max",
            "16",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--memory-limit-gb",
            str(3 / 1024),
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "attention_scaling.json").read_text())
    rows = {(r["kind"], r["grid"][0]): r for r in data["rows"]}
    assert set(rows) == {("axial", 8), ("axial", 16), ("full", 8), ("full", 16)}
    assert rows[("axial", 8)]["status"] == "ok"
    assert rows[("axial", 8)]["latency"]["median_s"] > 0
    assert rows[("axial", 8)]["memory"]["method"] in ("rss-hwm-reset", "ru_maxrss")
    for side in (8, 16):
        assert rows[("full", side)]["status"] == "skipped"
        assert rows[("full", side)]["reason"].startswith("skipped: would need")
    md = (tmp_path / "attention_scaling.md").read_text()
    assert "5,461 times fewer" in md and "skipped: would need" in md
    assert "skipped" in res.output
    assert attention_markdown(data) == md  # the Markdown is a pure function of the JSON
    assert data["machine"]["torch_version"] == torch.__version__ and data["date"]
    assert math.isclose(data["settings"]["memory_limit_bytes"], 3 * 2**20, rel_tol=1e-6)
