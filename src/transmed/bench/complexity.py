"""Model complexity: parameters, FLOPs, forward latency and peak memory of every registered model.

Each model is measured in its own fresh 'spawn' child process (:func:`run_isolated`), in eval
mode under ``torch.inference_mode()``, on one fp32 input of shape (1, 4, D, H, W):

1. the model and input are built, the memory baseline is taken and the peak is reset;
2. the first forward runs under ``FlopCounterMode`` (FLOPs) and doubles as the first warm-up;
3. ``warmup − 1`` more untimed forwards, then ``repeats`` timed ones (``time.perf_counter``);
   a model whose first forward already takes long gets fewer timed runs (never fewer than
   ``min_repeats``) so that a full 128³ sweep over all models stays within minutes;
4. the memory report: process peak, and peak − baseline = the forward's working memory.

Time ratios are taken against a reference model (``segresnet``) measured in the same run on
the same machine; ratios across runs or machines are not comparable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transmed.bench.isolation import run_isolated
from transmed.bench.results import machine_info, machine_markdown, now_iso, write_results

REFERENCE_MODEL = "segresnet"
IN_CHANNELS = 4
OUT_CHANNELS = 3
MAX_SIDE = 512  # voxels; a 512³ fp32 input with 4 channels is already 2 GiB


def check_size(size: Sequence[int]) -> tuple[int, int, int]:
    """Validate a spatial size (D, H, W) in voxels."""
    if len(size) != 3:
        raise ValueError(f"--size needs three values D H W, got {list(size)}")
    out = tuple(int(s) for s in size)
    if any(s < 1 or s > MAX_SIDE for s in out):
        raise ValueError(f"--size values must be between 1 and {MAX_SIDE} voxels, got {list(out)}")
    return out  # type: ignore[return-value]


def resolve_models(spec: str | Sequence[str], reference: str | None = REFERENCE_MODEL) -> list[str]:
    """Model names from ``"all"`` or ``"a,b,c"``; the reference model is added if missing.

    Raises:
        ValueError: an unknown model name (the message lists the registered ones).
    """
    from transmed.models import list_models

    available = list_models()
    if isinstance(spec, str):
        names = available if spec.strip().lower() == "all" else spec.split(",")
    else:
        names = list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("--models is empty; use 'all' or a comma-separated list")
    unknown = [n for n in names if n not in available]
    if reference and reference not in available:
        unknown.append(reference)
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; registered models: {available}")
    if reference and reference not in names:
        names.append(reference)
    return list(dict.fromkeys(names))


def measure_model(
    name: str,
    size: tuple[int, int, int],
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    model_kwargs: dict[str, Any] | None = None,
    max_seconds: float | None = 60.0,
    min_repeats: int = 3,
) -> dict[str, Any]:
    """Measure one model in the current process (meant to run in a fresh child process).

    Args:
        name: registered model name.
        size: spatial input size (D, H, W) in voxels; input is (1, 4, D, H, W) fp32.
        repeats: timed forwards requested.
        warmup: untimed forwards first (the FLOP-counting forward is the first of them and
            runs even with ``warmup=0``).
        threads: torch intra-op threads (``None``: torch's default).
        device: ``"cpu"`` or ``"cuda[:i]"``.
        model_kwargs: extra ``create_model`` arguments.
        max_seconds: budget for the timed forwards; when ``repeats`` × first-forward time
            exceeds it, fewer runs are timed, but at least ``min(repeats, min_repeats)``.
        min_repeats: floor for the reduced number of timed runs.

    Returns:
        A dict with ``status`` ``"ok"`` or ``"n/a"`` (fixed-size model that cannot take the
        input), ``params``, and for ``"ok"`` also ``flops``, ``latency`` (see
        :func:`~transmed.bench.timing.summarize_times`), ``repeats`` and ``memory`` (bytes).
    """
    import torch

    from transmed.bench.flops import flop_counter, prewarm_runtime
    from transmed.bench.memory import MemoryProbe
    from transmed.bench.timing import summarize_times, time_calls
    from transmed.models import create_model

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    prewarm_runtime(device)
    probe = MemoryProbe(device)
    probe.runtime()
    model = create_model(name, IN_CHANNELS, OUT_CHANNELS, **(model_kwargs or {}))
    model = model.eval().to(device)
    params = sum(p.numel() for p in model.parameters())
    result: dict[str, Any] = {"name": name, "params": int(params), "size": list(size)}
    fixed = getattr(model, "fixed_size", None)
    if fixed is not None and any(s > f for s, f in zip(size, fixed, strict=True)):
        fixed_txt = "×".join(str(f) for f in fixed)
        return {**result, "status": "n/a", "reason": f"n/a (fixed size {fixed_txt})"}

    x = torch.randn(1, IN_CHANNELS, *size, device=device)  # (B, C, D, H, W)
    sync = (lambda: torch.cuda.synchronize(device)) if str(device).startswith("cuda") else None
    probe.baseline()
    with torch.inference_mode():
        start = time.perf_counter()
        with flop_counter() as counter:
            y = model(x)  # (B, 3, D, H, W)
        if sync is not None:
            sync()
        first_s = time.perf_counter() - start
        out_shape = list(y.shape)
        del y
        for _ in range(max(0, warmup - 1)):
            model(x)
        n = repeats
        if max_seconds is not None and first_s * repeats > max_seconds:
            n = min(repeats, max(min_repeats, math.floor(max_seconds / max(first_s, 1e-9))))
        times = time_calls(lambda: model(x), n, sync)
    memory = probe.report()
    expected = [1, OUT_CHANNELS, *size]
    if out_shape != expected:
        raise RuntimeError(f"{name} returned shape {out_shape}, expected {expected}")
    return {
        **result,
        "status": "ok",
        "flops": int(counter.get_total_flops()),
        "first_forward_s": first_s,
        "latency": summarize_times(times),
        "repeats_requested": repeats,
        "repeats": n,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "memory": memory.to_dict(),
    }


def static_check(
    name: str, size: tuple[int, int, int], model_kwargs: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The "n/a" entry when a fixed-size model cannot take ``size``, found without a child.

    The model is built on the ``meta`` device (no memory, no initialisation cost; UNETR's 100 M
    parameters would take seconds). ``None`` when the model can take the input or cannot be
    built on ``meta`` (then :func:`measure_model` checks it in the child).
    """
    import torch

    from transmed.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(name, IN_CHANNELS, OUT_CHANNELS, **(model_kwargs or {}))
    except (RuntimeError, NotImplementedError):  # e.g. .item() on a meta tensor
        return None
    fixed = getattr(model, "fixed_size", None)
    if fixed is None or all(s <= f for s, f in zip(size, fixed, strict=True)):
        return None
    return {
        "name": name,
        "params": int(sum(p.numel() for p in model.parameters())),
        "size": list(size),
        "status": "n/a",
        "reason": f"n/a (fixed size {'×'.join(str(f) for f in fixed)})",
    }


def run_complexity(
    models: Sequence[str],
    size: tuple[int, int, int] = (128, 128, 128),
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    reference: str | None = REFERENCE_MODEL,
    max_model_seconds: float | None = 60.0,
    model_kwargs: dict[str, dict[str, Any]] | None = None,
    on_result: Callable[[int, int, dict[str, Any]], None] | None = None,
    on_start: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``models`` one by one, each in a fresh child process; the JSON-ready result.

    Args:
        models: registered model names (see :func:`resolve_models`).
        size, repeats, warmup, threads, device: see :func:`measure_model`.
        reference: model the time ratios are taken against (``None``: no ratios).
        max_model_seconds: per-model budget for timed forwards (see :func:`measure_model`).
        model_kwargs: per-model extra ``create_model`` arguments.
        on_start, on_result: progress callbacks ``(index, total, name | entry)``.
    """
    size = check_size(size)
    if repeats < 1:
        raise ValueError(f"--repeats must be ≥ 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"--warmup must be ≥ 0, got {warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {threads}")
    started = time.perf_counter()
    date = now_iso()
    machine = machine_info(device, threads)  # before the run: the load average is the idle one
    entries = []
    for i, name in enumerate(models, start=1):
        if on_start is not None:
            on_start(i, len(models), name)
        t0 = time.perf_counter()
        kwargs = {
            "name": name,
            "size": size,
            "repeats": repeats,
            "warmup": warmup,
            "threads": threads,
            "device": device,
            "model_kwargs": (model_kwargs or {}).get(name, {}),
            "max_seconds": max_model_seconds,
        }
        timeout = None if max_model_seconds is None else 600 + 20 * max_model_seconds
        entry = static_check(name, size, kwargs["model_kwargs"])
        if entry is None:
            entry = run_isolated("transmed.bench.complexity.measure_model", kwargs, timeout)
        entry.setdefault("name", name)
        entry["wall_s"] = time.perf_counter() - t0
        entries.append(entry)
        if on_result is not None:
            on_result(i, len(models), entry)
    add_ratios(entries, reference)
    return {
        "benchmark": "complexity",
        "date": date,
        "machine": machine,
        "settings": {
            "input_shape": [1, IN_CHANNELS, *size],
            "dtype": "float32",
            "mode": "eval, torch.inference_mode()",
            "repeats": repeats,
            "warmup": warmup,
            "threads": threads,
            "device": device,
            "max_model_seconds": max_model_seconds,
            "isolation": "one fresh 'spawn' child process per model",
        },
        "reference_model": reference,
        "models": entries,
        "total_wall_s": time.perf_counter() - started,
    }


def add_ratios(entries: list[dict[str, Any]], reference: str | None) -> None:
    """Add ``time_ratio`` and ``param_ratio`` to each measured entry (vs ``reference``)."""
    ref = next((e for e in entries if e.get("name") == reference and e.get("status") == "ok"), None)
    for e in entries:
        ok = e.get("status") == "ok" and ref is not None
        e["time_ratio"] = e["latency"]["median_s"] / ref["latency"]["median_s"] if ok else None
        e["param_ratio"] = e["params"] / ref["params"] if ok and ref["params"] else None


def _mib(b: int | None) -> str:
    return "—" if b is None else f"{b / 2**20:,.0f}"


def complexity_markdown(result: dict[str, Any], target: str = "transmed_full") -> str:
    """The result as Markdown: machine, settings, one table row per model, the target line."""
    s = result["settings"]
    ref = result.get("reference_model")
    shape = "×".join(str(v) for v in s["input_shape"])
    lines = [
        "# Model complexity",
        "",
        machine_markdown(result["machine"], result["date"]),
        "",
        f"Input {shape} fp32, eval mode, `torch.inference_mode()`. Latency: median and "
        f"interquartile range (IQR) of the timed forwards after {s['warmup']} warm-up "
        f"forward(s) (`time.perf_counter`); {s['repeats']} timed forwards requested, fewer for "
        "models whose forward exceeds the per-model budget (column *runs*). Each model ran in "
        "its own fresh child process. FLOPs: `torch.utils.flop_counter.FlopCounterMode`, one "
        "forward (multiply-add = 2 FLOPs; matmul, convolution and attention only). A large "
        "IQR, or a min far below the median, means other processes competed for the cores "
        "during the run. Peak "
        "memory: *forward* = peak − baseline after model and input were built (the forward's "
        "working memory); *process* = the absolute peak "
        + (
            "of the CUDA allocator."
            if str(s["device"]).startswith("cuda")
            else "resident set size (includes Python, torch and the weights)."
        ),
        "",
        f"| model | params (M) | GFLOPs | median (s) | IQR (s) | min (s) | runs "
        f"| time vs {ref or '—'} "
        f"| params vs {ref or '—'} | forward peak (MiB) | process peak (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in result["models"]:
        name = e["name"]
        if e.get("status") != "ok":
            reason = e.get("reason", "failed").splitlines()[0]
            params = f"{e['params'] / 1e6:.2f}" if e.get("params") is not None else "—"
            lines.append(f"| {name} | {params} | {reason} | | | | | | | | |")
            continue
        lat, mem = e["latency"], e["memory"]
        tr = "—" if e.get("time_ratio") is None else f"{e['time_ratio']:.2f}×"
        pr = "—" if e.get("param_ratio") is None else f"{e['param_ratio']:.2f}×"
        lines.append(
            f"| {name} | {e['params'] / 1e6:.2f} | {e['flops'] / 1e9:,.1f} | "
            f"{lat['median_s']:.3f} | {lat['iqr_s']:.3f} | {lat['min_s']:.3f} | {e['repeats']} "
            f"| {tr} | {pr} | "
            f"{_mib(mem['forward_peak_bytes'])} | {_mib(mem['peak_bytes'])} |"
        )
    lines += ["", "## Target", "", target_sentence(result, target), ""]
    lines.append(f"Total wall time of this run: {result['total_wall_s']:.0f} s.")
    lines.append("")
    return "\n".join(lines)


def target_sentence(result: dict[str, Any], target: str = "transmed_full") -> str:
    """Report (not assert) the target: ``target`` ≤ 0.5× the reference time, params same order."""
    ref = result.get("reference_model")
    goal = (
        f"`{target}` at most 0.5× the forward time of `{ref}` at 1×4×128³ on 2 CPU cores, "
        "with parameters in the same order of magnitude."
    )
    e = next((m for m in result["models"] if m["name"] == target), None)
    if e is None or e.get("status") != "ok" or e.get("time_ratio") is None:
        return f"Goal: {goal} Not measured in this run."
    shape = result["settings"]["input_shape"]
    threads = result["machine"]["torch_threads"]
    setting_ok = shape == [1, IN_CHANNELS, 128, 128, 128] and threads == 2
    order = abs(math.log10(e["param_ratio"])) < 1 if e.get("param_ratio") else False
    verdict = "met" if e["time_ratio"] <= 0.5 and order else "not met"
    caveat = "" if setting_ok else " (input size or thread count of this run differ from the goal)"
    return (
        f"Goal: {goal} Measured: time {e['time_ratio']:.2f}× and parameters "
        f"{e['param_ratio']:.2f}× of `{ref}` — {verdict}{caveat}."
    )


def write_complexity(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``complexity.json`` and ``complexity.md`` atomically into ``out_dir``."""
    return write_results(out_dir, "complexity", result, complexity_markdown(result))
