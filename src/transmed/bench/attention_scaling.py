"""Attention scaling study: one axial attention block against full 3D self-attention.

On a token grid of D×H×W = N tokens, full self-attention scores every pair: N² scores per head.
Axial attention (:class:`~transmed.models.layers.axial_attention.AxialAttentionBlock3d`) scores
each token only against the D + H + W tokens on its three axis lines: N·(D+H+W) scores. For
D = H = W = 128 the reduction is (128³)² / (128³·384) = 128³ / 384 ≈ 5,461 times fewer scores.

Both blocks have the same width (32 channels, 4 heads, MLP ratio 2 by default) and run one by one
on grids 8³, 16³, 24³, 32³, 48³, 64³ … in fresh child processes (time and peak memory, as in
:mod:`transmed.bench.complexity`). Full attention stops cleanly: before each size, its memory is
predicted from the last measured size and the run is skipped when it would not fit the memory
limit or when one forward would exceed the time limit (see :func:`plan_size`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transmed.bench.isolation import run_isolated
from transmed.bench.memory import meminfo_bytes
from transmed.bench.results import machine_info, machine_markdown, now_iso, write_results

KINDS = ("axial", "full")
GRID_SIDES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
BYTES_FP32 = 4
# Rough activations of one block per token and channel (input, LayerNorm, Q/K/V, attention
# output, projection, MLP hidden ×2, residuals); only used before anything was measured.
ACTIVATIONS_PER_TOKEN_CHANNEL = 12


class FullAttentionBlock3d(nn.Module):
    """Pre-norm transformer block with multi-head self-attention over all D·H·W tokens.

    The comparison baseline for the axial block, written here rather than taken from MONAI so
    that it matches one axis of :class:`AxialAttentionBlock3d` layer for layer (LayerNorm →
    Q/K/V → QK-norm → ``scaled_dot_product_attention`` → projection, then LayerNorm → MLP)
    except for which tokens attend to which (the axial block repeats its sub-block per axis).
    No position bias: a dense 3D relative bias would itself be an N×N tensor per head, which is
    exactly what this baseline is meant to show the cost of.

    Args:
        channels: feature channels C (divisible by ``num_heads``).
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``channels``.

    Shape: (B, C, D, H, W) → (B, C, D, H, W).
    """

    def __init__(self, channels: int, num_heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if channels < 1 or num_heads < 1 or channels % num_heads:
            raise ValueError(
                f"channels ({channels}) must be a positive multiple of num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.q_norm = nn.LayerNorm(channels // num_heads)
        self.k_norm = nn.LayerNorm(channels // num_heads)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        hidden = max(1, int(round(channels * mlp_ratio)))
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C) with N = D·H·W
        qkv = self.qkv(self.norm1(t)).reshape(b, d * h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, C/heads)
        q, k = self.q_norm(q), self.k_norm(k)  # QK-norm, as in the axial block
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        t = t + self.proj(a.transpose(1, 2).reshape(b, d * h * w, c))  # (B, N, C)
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, d, h, w)  # (B, C, D, H, W)


def build_block(kind: str, channels: int, heads: int, grid: Sequence[int]) -> nn.Module:
    """The ``"axial"`` (relative bias reaching the whole grid) or ``"full"`` attention block."""
    if kind == "axial":
        from transmed.models.layers.axial_attention import AxialAttentionBlock3d

        return AxialAttentionBlock3d(channels, num_heads=heads, max_len=max(2, *grid))
    if kind == "full":
        return FullAttentionBlock3d(channels, num_heads=heads)
    raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")


def score_count(kind: str, grid: Sequence[int]) -> int:
    """Attention scores per head: N² (full) or N·(D+H+W) (axial), N = D·H·W tokens."""
    n = math.prod(grid)
    if kind == "full":
        return n * n
    if kind == "axial":
        return n * sum(grid)
    raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")


def score_bytes(kind: str, grid: Sequence[int], heads: int) -> int:
    """Bytes of all fp32 attention scores of one forward if they were materialised at once."""
    return score_count(kind, grid) * heads * BYTES_FP32


def predict_memory(
    kind: str, grid: Sequence[int], heads: int, channels: int, history: Sequence[dict[str, Any]]
) -> int:
    """Predicted forward working memory (bytes) of ``kind`` at ``grid`` from measured sizes.

    Model: w(N) = a·N + b·S(N), with S the bytes of all scores if materialised (see
    :func:`score_bytes`); b is the fraction of the score matrix resident at once (≈1 for SDPA's
    math kernel, ≈0 for a fused flash kernel that never materialises it), a the per-token
    activations. Why a fit rather than the kernel's name: what is resident depends on the
    kernel, its block sizes and the allocator, so we measure it and extrapolate.

    * no measurement: all scores materialised plus the block's activations (pessimistic);
    * one: the measured memory scaled by the score growth (all of it treated as N²: an upper
      bound);
    * two or more: a, b ≥ 0 solved from the last two; a negative coefficient is set to 0 and
      the other one taken from the last size.
    """
    n, sb = math.prod(grid), score_bytes(kind, grid, heads)
    ok = [h for h in history if h.get("status") == "ok"]
    if not ok:
        return sb + n * channels * BYTES_FP32 * ACTIVATIONS_PER_TOKEN_CHANNEL
    last = ok[-1]
    w2, n2, s2 = (
        max(last["memory"]["forward_peak_bytes"], 1),
        math.prod(last["grid"]),
        score_bytes(kind, last["grid"], heads),
    )
    if len(ok) == 1:
        return int(w2 * sb / s2)
    prev = ok[-2]
    w1, n1, s1 = (
        max(prev["memory"]["forward_peak_bytes"], 1),
        math.prod(prev["grid"]),
        score_bytes(kind, prev["grid"], heads),
    )
    det = n1 * s2 - n2 * s1
    a = (w1 * s2 - w2 * s1) / det if det else -1.0
    b = (n1 * w2 - n2 * w1) / det if det else -1.0
    if b < 0 or a < 0:
        a, b = (w2 / n2, 0.0) if b < 0 else (0.0, w2 / s2)
    return int(a * n + b * sb)


def plan_size(
    kind: str,
    grid: Sequence[int],
    heads: int,
    channels: int,
    history: Sequence[dict[str, Any]],
    memory_limit_bytes: int,
    time_limit_s: float,
) -> dict[str, Any]:
    """Decide whether to run ``kind`` at ``grid``: predicted memory and time against the limits.

    Args:
        history: the sizes of this kind measured so far, smallest first (results of
            :func:`measure_attention` with their ``grid``).
        memory_limit_bytes: skip when :func:`predict_memory` exceeds it.
        time_limit_s: skip when one forward would take longer: the last measured median scaled
            by the growth of the score count (N² for full attention, N·(D+H+W) for axial).

    Returns:
        ``{"run": bool, "reason": str | None, "predicted_bytes": int, "predicted_s": float |
        None}``; ``reason`` is the "skipped: …" text when ``run`` is False.
    """
    predicted = predict_memory(kind, grid, heads, channels, history)
    ok = [h for h in history if h.get("status") == "ok"]
    predicted_s = None
    if ok:
        growth = score_count(kind, grid) / score_count(kind, ok[-1]["grid"])
        predicted_s = ok[-1]["latency"]["median_s"] * growth
    plan: dict[str, Any] = {
        "run": True,
        "reason": None,
        "predicted_bytes": int(predicted),
        "predicted_s": predicted_s,
    }
    if predicted > memory_limit_bytes:
        plan["run"] = False
        plan["reason"] = (
            f"skipped: would need ~{predicted / 2**30:,.2f} GiB "
            f"(limit {memory_limit_bytes / 2**30:,.2f} GiB)"
        )
    elif predicted_s is not None and predicted_s > time_limit_s:
        plan["run"] = False
        plan["reason"] = (
            f"skipped: one forward would take ~{predicted_s:,.0f} s (limit {time_limit_s:g} s)"
        )
    return plan


def measure_attention(
    kind: str,
    grid: tuple[int, int, int],
    channels: int = 32,
    heads: int = 4,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    max_seconds: float | None = 60.0,
) -> dict[str, Any]:
    """Time one attention block and measure its peak memory (meant for a fresh child process).

    Input (1, channels, D, H, W) fp32, eval mode, ``torch.inference_mode()``; the first forward
    counts FLOPs and is the first warm-up. Timed runs are cut to fit ``max_seconds`` (at least
    one). Returns ``status``, ``latency``, ``memory`` (bytes, see
    :class:`~transmed.bench.memory.MemoryReport`), ``flops``, ``sdpa_kernel``.
    """
    from transmed.bench.flops import flop_counter, prewarm_runtime
    from transmed.bench.memory import MemoryProbe
    from transmed.bench.timing import summarize_times, time_calls

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    prewarm_runtime(device)
    probe = MemoryProbe(device)
    probe.runtime()
    block = build_block(kind, channels, heads, grid).eval().to(device)
    x = torch.randn(1, channels, *grid, device=device)  # (B, C, D, H, W)
    sync = (lambda: torch.cuda.synchronize(device)) if str(device).startswith("cuda") else None
    probe.baseline()
    with torch.inference_mode():
        start = time.perf_counter()
        with flop_counter() as counter:
            block(x)
        if sync is not None:
            sync()
        first_s = time.perf_counter() - start
        for _ in range(max(0, warmup - 1)):
            block(x)
        n = repeats
        if max_seconds is not None and first_s * repeats > max_seconds:
            n = min(repeats, max(1, math.floor(max_seconds / max(first_s, 1e-9))))
        times = time_calls(lambda: block(x), n, sync)
    memory = probe.report()
    return {
        "status": "ok",
        "kind": kind,
        "grid": list(grid),
        "flops": int(counter.get_total_flops()),
        "sdpa_kernel": sdpa_kernel_of(block, channels, device),
        "first_forward_s": first_s,
        "latency": summarize_times(times),
        "repeats": n,
        "memory": memory.to_dict(),
    }


def sdpa_kernel_of(block: nn.Module, channels: int, device: str = "cpu") -> str:
    """The aten kernel ``scaled_dot_product_attention`` dispatches to inside ``block``.

    Recorded on a tiny 4³ input under ``no_grad`` (under ``inference_mode`` a dispatch mode only
    sees the composite op). The math kernel is itself decomposed before a dispatch mode sees it,
    so it is recognised by its ``_safe_softmax``.
    """
    from transmed.bench.flops import OpRecorder

    x = torch.randn(1, channels, 4, 4, 4, device=device)  # (B, C, D, H, W)
    with torch.no_grad(), OpRecorder("aten::") as rec:
        block(x)
    fused = [n for n in rec.names if n.startswith("aten::_scaled_dot_product")]
    if fused:
        return fused[0].removeprefix("aten::")
    if "aten::_safe_softmax" in rec.names:
        return "_scaled_dot_product_attention_math"
    return "unknown"


def grid_sides(max_side: int, min_side: int = 8) -> list[int]:
    """The cubic grid sides studied: 8, 16, 24, 32, 48, 64, 96, … up to ``max_side``."""
    if max_side < min_side:
        raise ValueError(f"--scaling-max must be ≥ {min_side}, got {max_side}")
    sides = [s for s in GRID_SIDES if min_side <= s <= max_side]
    if max_side not in sides and max_side > sides[-1]:
        sides.append(max_side)
    return sides


def memory_limit(limit_gb: float | None) -> int:
    """Bytes available to one run: ``limit_gb`` GiB, capped by ``MemAvailable`` when known."""
    if limit_gb is not None and limit_gb <= 0:
        raise ValueError(f"--memory-limit-gb must be > 0, got {limit_gb}")
    available = meminfo_bytes("MemAvailable")
    limits = [int(limit_gb * 2**30)] if limit_gb is not None else []
    if available is not None:
        limits.append(available)
    if not limits:
        raise ValueError("no --memory-limit-gb given and /proc/meminfo has no MemAvailable")
    return min(limits)


def run_attention_scaling(
    max_side: int = 64,
    channels: int = 32,
    heads: int = 4,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    memory_limit_gb: float | None = 8.0,
    time_limit_s: float = 30.0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the study over :func:`grid_sides` for both kinds; the JSON-ready result.

    Each (kind, size) runs in a fresh child process unless :func:`plan_size` skips it; once a
    kind is skipped at one size, the larger sizes are skipped too (with their own predictions).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    if time_limit_s <= 0:
        raise ValueError(f"--scaling-time-limit must be > 0 s, got {time_limit_s}")
    if channels % heads:
        raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
    started = time.perf_counter()
    date = now_iso()
    machine = machine_info(device, threads)  # before the run: the load average is the idle one
    limit = memory_limit(memory_limit_gb)
    sides = grid_sides(max_side)
    rows: list[dict[str, Any]] = []
    for kind in KINDS:
        history: list[dict[str, Any]] = []
        stopped = False
        for side in sides:
            grid = (side, side, side)
            plan = plan_size(kind, grid, heads, channels, history, limit, time_limit_s)
            base = {
                "kind": kind,
                "grid": list(grid),
                "tokens": side**3,
                "scores_per_head": score_count(kind, grid),
                "score_bytes_if_materialised": score_bytes(kind, grid, heads),
                "predicted_bytes": plan["predicted_bytes"],
                "predicted_s": plan["predicted_s"],
            }
            if stopped or not plan["run"]:
                stopped = True
                row = {**base, "status": "skipped", "reason": plan["reason"]}
                if row["reason"] is None:  # would fit, but a smaller size was already skipped
                    row["reason"] = "skipped: a smaller size was skipped"
            else:
                kwargs = {
                    "kind": kind,
                    "grid": grid,
                    "channels": channels,
                    "heads": heads,
                    "repeats": repeats,
                    "warmup": warmup,
                    "threads": threads,
                    "device": device,
                    "max_seconds": 2 * time_limit_s,
                }
                measured = run_isolated(
                    "transmed.bench.attention_scaling.measure_attention",
                    kwargs,
                    timeout_s=600 + 10 * time_limit_s,
                )
                row = {**base, **measured}
                if row.get("status") == "ok":
                    history.append(row)
                else:
                    stopped = True
            rows.append(row)
            if on_result is not None:
                on_result(row)
    return {
        "benchmark": "attention_scaling",
        "date": date,
        "machine": machine,
        "settings": {
            "channels": channels,
            "heads": heads,
            "batch": 1,
            "dtype": "float32",
            "mode": "eval, torch.inference_mode()",
            "repeats": repeats,
            "warmup": warmup,
            "threads": threads,
            "device": device,
            "memory_limit_bytes": limit,
            "time_limit_s": time_limit_s,
            "grid_sides": sides,
            "isolation": "one fresh 'spawn' child process per block and size",
        },
        "rows": rows,
        "total_wall_s": time.perf_counter() - started,
    }


def _fmt_bytes(b: float | None) -> str:
    if b is None:
        return "—"
    return f"{b / 2**30:,.2f} GiB" if b >= 2**30 else f"{b / 2**20:,.1f} MiB"


def _cell(row: dict[str, Any] | None, what: str) -> str:
    if row is None:
        return "—"
    if row.get("status") != "ok":
        return row.get("reason", "failed").splitlines()[0]
    if what == "time":
        lat = row["latency"]
        return f"{lat['median_s']:.4f} s (IQR {lat['iqr_s']:.4f})"
    return _fmt_bytes(row["memory"]["forward_peak_bytes"])


def _ratio(full: dict[str, Any] | None, axial: dict[str, Any] | None, what: str) -> str:
    if not full or not axial or full.get("status") != "ok" or axial.get("status") != "ok":
        return "—"
    if what == "time":
        a, f = axial["latency"]["median_s"], full["latency"]["median_s"]
    else:
        a, f = axial["memory"]["forward_peak_bytes"], full["memory"]["forward_peak_bytes"]
    if a <= 0:
        return "—"
    r = f / a
    return f"{r:.2f}×" if r < 10 else f"{r:,.0f}×"


def attention_markdown(result: dict[str, Any], target_side: int = 64) -> str:
    """The study as Markdown: the theory for 128³, a side-by-side table, the 64³ memory target."""
    s = result["settings"]
    by = {(r["kind"], r["grid"][0]): r for r in result["rows"]}
    kernels = {r["kind"]: r.get("sdpa_kernel") for r in result["rows"] if r.get("status") == "ok"}
    n128 = 128**3
    lines = [
        "# Attention scaling: axial vs full 3D self-attention",
        "",
        machine_markdown(result["machine"], result["date"]),
        "",
        f"One block each, {s['channels']} channels, {s['heads']} heads, batch 1, fp32, eval "
        "mode, `torch.inference_mode()`, on cubic token grids. *Axial*: "
        "`AxialAttentionBlock3d` (attention along D, then H, then W, relative position bias). "
        "*Full*: `FullAttentionBlock3d` (same layers, `scaled_dot_product_attention` over all "
        f"N = D·H·W tokens). Time: median (IQR) of up to {s['repeats']} forwards after "
        f"{s['warmup']} warm-up; memory: the forward's peak working memory (peak RSS − RSS "
        "after the block and input were built); every (block, size) in its own fresh process. "
        f"SDPA kernels used: axial `{kernels.get('axial', '?')}`, full "
        f"`{kernels.get('full', '?')}`.",
        "",
        "## How many attention scores",
        "",
        "Full attention scores every token against every other: N² scores per head. Axial "
        "attention scores each token against the D + H + W tokens on its three axis lines: "
        "N·(D+H+W). For D = H = W = 128 (N = 128³ = 2,097,152 tokens):",
        "",
        f"(128³)² / (128³ · 384) = 128³ / 384 ≈ **{n128 / 384:,.0f} times fewer** attention "
        "scores — a ratio, not a percentage. In fp32 with "
        f"{s['heads']} heads that is {_fmt_bytes(score_bytes('full', (128,) * 3, s['heads']))} of "
        f"scores for full attention against "
        f"{_fmt_bytes(score_bytes('axial', (128,) * 3, s['heads']))} for axial.",
        "",
        "The measured ratios below are smaller than the score ratio: at small grids the "
        "linear-in-N parts (projections, MLP, LayerNorm) dominate, and a fused SDPA kernel "
        "(flash attention on CPU) never materialises the N² scores, so full attention's memory "
        "grows only like N while its time still grows like N².",
        "",
        "## Measured",
        "",
        f"Full attention is skipped when its predicted memory exceeds "
        f"{_fmt_bytes(s['memory_limit_bytes'])} or one forward would take longer than "
        f"{s['time_limit_s']:g} s (extrapolated from the previous size with the score growth).",
        "",
        "| grid | N | scores full N² | scores axial N·(D+H+W) | score ratio | full time "
        "| axial time | time ratio full/axial | full memory | axial memory | memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for side in s["grid_sides"]:
        full, axial = by.get(("full", side)), by.get(("axial", side))
        grid = (side,) * 3
        n_full, n_axial = score_count("full", grid), score_count("axial", grid)
        lines.append(
            f"| {side}³ | {side**3:,} | {n_full:.3g} | {n_axial:.3g} | {n_full / n_axial:,.0f}× "
            f"| {_cell(full, 'time')} | {_cell(axial, 'time')} | {_ratio(full, axial, 'time')} "
            f"| {_cell(full, 'memory')} | {_cell(axial, 'memory')} "
            f"| {_ratio(full, axial, 'memory')} |"
        )
    lines += ["", "## Target", "", axial_target_sentence(result, target_side), ""]
    lines.append(f"Total wall time of the study: {result['total_wall_s']:.0f} s.")
    lines.append("")
    return "\n".join(lines)


def axial_target_sentence(result: dict[str, Any], side: int = 64) -> str:
    """Report (not assert): the axial block at ``side``³ with 32 channels under 1 GiB on CPU."""
    goal = f"the axial attention block at a {side}³ token grid with 32 channels under 1 GiB peak"
    row = next((r for r in result["rows"] if r["kind"] == "axial" and r["grid"][0] == side), None)
    if row is None or row.get("status") != "ok":
        return f"Goal: {goal} memory on CPU. Not measured in this run."
    mem = row["memory"]
    block_peak = mem["peak_bytes"] - mem["runtime_bytes"]
    verdict = "met" if block_peak < 2**30 else "not met"
    return (
        f"Goal: {goal} memory on CPU. Measured: {_fmt_bytes(block_peak)} at peak for block, "
        f"input and forward together (process peak {_fmt_bytes(mem['peak_bytes'])} minus "
        f"{_fmt_bytes(mem['runtime_bytes'])} of Python + torch runtime measured before the "
        f"block was built), of which the forward's working memory is "
        f"{_fmt_bytes(mem['forward_peak_bytes'])} — {verdict}"
        + ("" if result["settings"]["channels"] == 32 else " (channels differ from the goal)")
        + "."
    )


def write_attention_scaling(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``attention_scaling.json`` and ``attention_scaling.md`` atomically into ``out_dir``."""
    return write_results(out_dir, "attention_scaling", result, attention_markdown(result))
