"""``transmed bench ...``: complexity and attention-scaling benchmarks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from transmed.bench.service import service_cmd
from transmed.bench.service_load import service_load_cmd

app = typer.Typer(
    help="Benchmarks (JSON + Markdown under benchmarks/results/).", no_args_is_help=True,
    rich_markup_mode="markdown",  # bracketed defaults stay visible (not rich tags)
)  # fmt: skip

DEFAULT_OUT = Path("benchmarks/results")
# The models of `bench predict` (kept here so `--help` needs no torch import).
_PREDICT_MODELS = ("transmed_full", "transmed_a", "transmed_d", "unet", "segresnet", "swinunetr")


def _fmt_entry(e: dict[str, Any]) -> str:
    if e.get("status") == "ok":
        lat, mem = e["latency"], e["memory"]
        return (
            f"{lat['median_s']:.3f} s median ({e['repeats']} runs, IQR {lat['iqr_s']:.3f} s), "
            f"{e['params'] / 1e6:.2f} M params, {e['flops'] / 1e9:,.1f} GFLOPs, "
            f"forward peak {mem['forward_peak_bytes'] / 2**20:,.0f} MiB "
            f"[{e['wall_s']:.0f} s]"
        )
    return f"{e.get('reason', 'failed').splitlines()[0]} [{e.get('wall_s', 0):.0f} s]"


def _fmt_row(r: dict[str, Any]) -> str:
    head = f"  {r['kind']:5s} {r['grid'][0]:>4d}³"
    if r.get("status") == "ok":
        return (
            f"{head}: {r['latency']['median_s']:.4f} s median, forward peak "
            f"{r['memory']['forward_peak_bytes'] / 2**20:,.1f} MiB ({r['sdpa_kernel']})"
        )
    return f"{head}: {r.get('reason', 'failed').splitlines()[0]}"


def _run_scaling(
    out: Path,
    max_side: int,
    channels: int,
    heads: int,
    repeats: int,
    warmup: int,
    threads: int | None,
    device: str,
    memory_limit_gb: float,
    time_limit: float,
) -> None:
    from transmed.bench.attention_scaling import run_attention_scaling, write_attention_scaling

    typer.echo(f"Attention scaling: axial vs full, grids up to {max_side}³")
    try:
        result = run_attention_scaling(
            max_side=max_side,
            channels=channels,
            heads=heads,
            repeats=repeats,
            warmup=warmup,
            threads=threads,
            device=device,
            memory_limit_gb=memory_limit_gb,
            time_limit_s=time_limit,
            on_result=lambda r: typer.echo(_fmt_row(r)),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    paths = write_attention_scaling(result, out)
    typer.echo(f"Wrote {paths['json']} and {paths['markdown']} ({result['total_wall_s']:.0f} s)")


@app.command("complexity")
def complexity_cmd(
    size: tuple[int, int, int] = typer.Option(
        (128, 128, 128), "--size", help="Input spatial size D H W (voxels); input is 1×4×D×H×W."
    ),
    models: str = typer.Option("all", "--models", help="'all' or a comma-separated list."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed forwards per model."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed forwards first."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="torch threads (default: torch's default)."
    ),
    device: str = typer.Option("cpu", "--device", help="'cpu' or 'cuda[:i]'."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the JSON and Markdown."),
    reference: str = typer.Option(
        "segresnet", "--reference", help="Model the time ratios are taken against ('' for none)."
    ),
    max_model_seconds: float = typer.Option(
        60.0,
        "--max-model-seconds",
        min=1.0,
        help="Budget for a model's timed forwards; slow models get fewer runs (at least 3).",
    ),
    no_scaling: bool = typer.Option(
        False, "--no-scaling", help="Skip the attention scaling study."
    ),
    scaling_max: int = typer.Option(64, "--scaling-max", help="Largest token grid side."),
    memory_limit_gb: float = typer.Option(
        8.0,
        "--memory-limit-gb",
        help="Attention study: memory for one run (capped by MemAvailable).",
    ),
    scaling_time_limit: float = typer.Option(
        30.0,
        "--scaling-time-limit",
        help="Attention study: skip sizes whose single forward would exceed this (s).",
    ),
) -> None:
    """Parameters, FLOPs, forward latency and peak memory of every model (+ attention scaling)."""
    from transmed.bench.complexity import resolve_models, run_complexity, write_complexity

    if device.startswith("cuda"):
        _check_cuda(device)
    started = time.perf_counter()
    try:
        names = resolve_models(models, reference or None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--models") from exc
    typer.echo(f"Complexity at 1×4×{'×'.join(map(str, size))} on {device}: {len(names)} models")
    try:
        result = run_complexity(
            names,
            size=size,
            repeats=repeats,
            warmup=warmup,
            threads=threads,
            device=device,
            reference=reference or None,
            max_model_seconds=max_model_seconds,
            on_start=lambda i, n, name: typer.echo(f"[{i}/{n}] {name:14s} ", nl=False),
            on_result=lambda i, n, e: typer.echo(_fmt_entry(e)),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    paths = write_complexity(result, out)
    typer.echo(f"Wrote {paths['json']} and {paths['markdown']} ({result['total_wall_s']:.0f} s)")
    if not no_scaling:
        _run_scaling(
            out, scaling_max, 32, 4, 5, 1, threads, device, memory_limit_gb, scaling_time_limit
        )
    typer.echo(f"Total wall time {time.perf_counter() - started:.0f} s")


@app.command("attention")
def attention_cmd(
    scaling_max: int = typer.Option(64, "--scaling-max", help="Largest token grid side."),
    channels: int = typer.Option(32, "--channels", min=1, help="Block width C."),
    heads: int = typer.Option(4, "--heads", min=1, help="Attention heads."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed forwards per size."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed forwards first."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads."),
    device: str = typer.Option("cpu", "--device", help="'cpu' or 'cuda[:i]'."),
    memory_limit_gb: float = typer.Option(
        8.0, "--memory-limit-gb", help="Memory for one run (capped by MemAvailable)."
    ),
    time_limit: float = typer.Option(
        30.0, "--time-limit", help="Skip sizes whose single forward would exceed this (s)."
    ),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the JSON and Markdown."),
) -> None:
    """Axial attention block vs full 3D self-attention: time and memory over token grids."""
    if device.startswith("cuda"):
        _check_cuda(device)
    _run_scaling(
        out,
        scaling_max,
        channels,
        heads,
        repeats,
        warmup,
        threads,
        device,
        memory_limit_gb,
        time_limit,
    )


def _check_cuda(device: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise typer.BadParameter(f"no CUDA device available for {device!r}", param_hint="--device")


@app.command("dynconv")
def dynconv_cmd(
    repeats: int = typer.Option(20, "--repeats", min=1, help="Interleaved timed pairs."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the JSON and Markdown."),
) -> None:
    """Dynamic vs static 3×3×3 convolution of the same shape (target: ≤ 1.10× at batch 1)."""
    from transmed.bench.dynamic_conv import run_dynamic_conv_benchmark, to_markdown
    from transmed.bench.results import machine_info, now_iso, write_results

    rows = run_dynamic_conv_benchmark(repeats=repeats)
    date = now_iso()
    md = "\n".join([
        f"# Dynamic convolution overhead ({date})", "",
        "`DynamicConv3d` (K = 4 kernels mixed per sample) against `nn.Conv3d` of the same shape, "
        "forward, fp32, `inference_mode`, interleaved pairs; median of the per-pair ratios. "
        "Target: ≤ 1.10× at batch size 1.", "", to_markdown(rows), "",
    ])  # fmt: skip
    paths = write_results(out, "dynamic_conv", {"date": date, "machine": machine_info("cpu"),
                                                "rows": rows}, md)  # fmt: skip
    typer.echo(md)
    typer.echo(f"Wrote {paths['json']} and {paths['markdown']}")


@app.command("training")
def training_cmd(
    models: str = typer.Option("transmed_full", "--models", help="Comma-separated names."),
    patch: int = typer.Option(128, "--patch", min=16, help="Cubic patch side (voxels)."),
    batch: int = typer.Option(2, "--batch", min=1),
    steps: int = typer.Option(2, "--steps", min=1, help="Timed steps per child process."),
    rounds: int = typer.Option(2, "--rounds", min=1, help="Alternating rounds."),
    precisions: str = typer.Option("fp32,bf16", "--precisions", help="Comma-separated."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the JSON and Markdown."),
) -> None:
    """Training step time and peak memory: grad checkpointing on/off, fp32 vs bf16."""
    from transmed.bench.training import (
        run_training_benchmark,
        training_markdown,
        write_training_benchmark,
    )

    result = run_training_benchmark(
        tuple(m.strip() for m in models.split(",") if m.strip()), patch, batch, steps, rounds,
        tuple(p.strip() for p in precisions.split(",") if p.strip()),
    )  # fmt: skip
    paths = write_training_benchmark(result, str(out))
    typer.echo(training_markdown(result))
    typer.echo(f"Wrote {paths['json']} and {paths['markdown']}")


@app.command("predict")
def predict_cmd(
    models: str = typer.Option(",".join(_PREDICT_MODELS), "--models", help="Comma-separated."),
    shape: tuple[int, int, int] = typer.Option((240, 240, 155), "--shape", help="Case D H W."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed cases per configuration."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0 = default)."),
    memory_budget_gb: float = typer.Option(
        16.0, "--memory-budget-gb", min=0.5, help="Whole volume only where it fits this."
    ),
    no_variants: bool = typer.Option(False, "--no-variants", help="Skip the speed choices."),
    no_scaling: bool = typer.Option(False, "--no-scaling", help="Skip the voxel-count scaling."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Results folder."),
    stem: str = typer.Option("predict", "--stem", help="Result file name stem."),
) -> None:
    """End-to-end `transmed predict` latency and peak RSS per model on a full-size case."""
    from transmed.bench.predict import markdown, run_predict_benchmark
    from transmed.bench.results import write_results

    names = tuple(m.strip() for m in models.split(",") if m.strip())
    typer.echo(f"Predict benchmark: {', '.join(names)} on {shape}")
    result = run_predict_benchmark(
        models=names, shape=shape, repeats=repeats, threads=threads or None,
        memory_budget_gb=memory_budget_gb, variants=not no_variants,
        scales=() if no_scaling else (0.5, 1.0, 2.0), progress=typer.echo,
    )  # fmt: skip
    paths = write_results(out, stem, result, markdown(result))
    typer.echo(f"Wrote {paths['json']} and {paths['markdown']}")


app.command("service")(service_cmd)
app.command("service-load")(service_load_cmd)
