"""``transmed bench predict``: end-to-end per-case latency and peak memory of ``transmed predict``.

What is timed is the product path, not a bare forward: :func:`transmed.inference.batch.
predict_batch` on one full-size 4-modality case (NIfTI read → preprocess → whole-volume or
Gaussian sliding-window inference → back onto the input grid → post-processing → NIfTI write),
with the model loaded once beforehand (loading is reported apart). Each configuration runs in
its own fresh process (:mod:`transmed.bench.isolation`): one warm-up case, then ``repeats``
timed cases; the peak RSS is the process's high-water mark over the timed cases.

Models are untrained (random initialisation with each model's default, published
configuration): speed and memory do not depend on the weights, except the post-processing,
which has more to clean in an untrained model's noisy output than in a trained one's.

Sliding window uses the peers' standard setting (MONAI's BraTS tutorials and Swin UNETR's
paper): 128³ windows, overlap 0.5, Gaussian weighting. Whole volume (``mode="whole"``) is
run where the predictor's memory estimate fits the budget (``--memory-budget``), else skipped.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = ("transmed_full", "transmed_a", "transmed_d", "unet", "segresnet", "swinunetr")
REFERENCE = "segresnet"
BRATS_SHAPE = (240, 240, 155)
WINDOW = (128, 128, 128)
SCALES = (0.5, 1.0, 2.0)
SLOW_RUN_S = 30.0  # a warm-up slower than this gets one timed run (swinunetr's windows)


def make_case(out_dir: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """One synthetic BraTS 2021 case folder (int16 NIfTI, no label needed) at ``shape``."""
    from transmed.data.synth.cohort import generate_cohort

    paths = generate_cohort(out_dir, 1, seed, shape=shape, workers=1, progress=False)
    case_dir = Path(paths[0])
    for seg in case_dir.glob("*_seg.nii.gz"):
        seg.unlink()  # prediction input has no label
    return case_dir


def make_checkpoint(name: str, path: Path, **model_kwargs: Any) -> Path:
    """An untrained ``name`` with its default arguments, the default preprocessing (the
    reference grid's own spacing: 1 mm for BraTS) and 128³ patches."""
    from transmed.models.checkpoint import save_untrained_checkpoint

    return save_untrained_checkpoint(path, name, patch_size=WINDOW, **model_kwargs)


def measure_predict(
    checkpoint: str,
    case_dir: str,
    mode: str,
    repeats: int = 3,
    threads: int | None = None,
    precision: str = "fp32",
    overlap: float = 0.5,
    memory_budget: int | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """Child-process body: load once, warm up, time ``repeats`` cases end to end."""
    import torch

    from transmed.bench.memory import peak_rss_bytes, reset_peak_rss
    from transmed.bench.timing import summarize_times
    from transmed.inference.batch import BatchWriter, predict_batch
    from transmed.inference.inputs import resolve_inputs
    from transmed.inference.postprocess import PostprocessConfig
    from transmed.inference.predictor import Predictor

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    predictor = Predictor.from_path(
        checkpoint,
        mode=mode,
        overlap=overlap,
        precision=precision,
        memory_budget=memory_budget,
        postprocess=PostprocessConfig(),
    )
    if compile:
        predictor.models = [torch.compile(m) for m in predictor.models]  # type: ignore[misc]
    load_s = time.perf_counter() - t0
    inputs = resolve_inputs(case_dir)
    case = inputs.cases[0]
    model = predictor.models[0]
    entry: dict[str, Any] = {
        "status": "ok",
        "mode": mode,
        "precision": precision,
        "compile": compile,
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "params": sum(p.numel() for p in model.parameters()),
    }
    net_shape = _net_shape(predictor, case)
    entry["network_shape"] = net_shape
    need = predictor.whole_volume_bytes(net_shape) if mode == "whole" and memory_budget else 0
    if memory_budget is not None and need > memory_budget:  # mode="whole" would refuse it
        return {
            **entry,
            "status": "skipped",
            "reason": (
                f"whole volume needs ~{need / 2**30:.1f} GiB (estimate), over the "
                f"{(memory_budget or 0) / 2**30:.0f} GiB budget"
            ),
        }
    with tempfile.TemporaryDirectory(prefix="transmed-bench-") as tmp:
        writer = BatchWriter(Path(tmp), inputs.layout)

        def one() -> tuple[float, Any]:
            start = time.perf_counter()
            (res,) = predict_batch(predictor, [case], writer)
            if not res.ok:
                raise RuntimeError(res.error)
            return time.perf_counter() - start, res

        warm_s, res = one()
        entry.update(warmup_s=warm_s, window=res.window)
        reset_peak_rss()
        runs = repeats if warm_s < SLOW_RUN_S or compile else 1  # compile: warm-up compiles
        times, stages = [], []
        for _ in range(runs):
            took, res = one()
            times.append(took)
            stages.append(res.seconds)
        entry["peak_rss_bytes"] = peak_rss_bytes()
    entry["latency"] = summarize_times(times)
    entry["stages_median_s"] = {
        k: statistics.median(s.get(k, 0.0) for s in stages)
        for k in ("read", "preprocess", "infer", "restore", "write")
    }
    return entry


def _net_shape(predictor: Any, case: Any) -> list[int]:
    from transmed.data.layouts import load_case

    return list(predictor.prepare(load_case(case).images).image.shape[1:])


def run_predict_benchmark(
    models: tuple[str, ...] = MODELS,
    shape: tuple[int, int, int] = BRATS_SHAPE,
    repeats: int = 3,
    threads: int | None = None,
    memory_budget_gb: float = 16.0,
    scales: tuple[float, ...] = SCALES,
    variants: bool = True,
    workdir: Path | None = None,
    progress: Any = print,
) -> dict[str, Any]:
    """Every configuration in its own process, in one run (see the module docstring)."""
    from transmed.bench.isolation import run_isolated
    from transmed.bench.results import machine_info, now_iso

    budget = int(memory_budget_gb * 2**30)
    preload = (
        "torch",
        "transmed.models.peers",
        "transmed.models.transmed",
        "transmed.inference.batch",
    )
    with tempfile.TemporaryDirectory(prefix="transmed-bench-predict-") as tmp:
        root = Path(workdir or tmp)
        case_dir = make_case(root / "case", shape)

        def run(label: str, ckpt: Path, case: Path, **kw: Any) -> dict[str, Any]:
            started = time.perf_counter()
            out = run_isolated(
                "transmed.bench.predict.measure_predict",
                {
                    "checkpoint": str(ckpt),
                    "case_dir": str(case),
                    "repeats": repeats,
                    "threads": threads,
                    "memory_budget": budget,
                    **kw,
                },
                preload=preload,
            )
            out["wall_s"] = time.perf_counter() - started
            progress(f"  {label}: {_fmt(out)}")
            return out

        entries: dict[str, dict[str, Any]] = {}
        for name in models:
            ckpt = make_checkpoint(name, root / f"{name}.pt")
            entries[name] = {
                "sliding": run(f"{name} sliding", ckpt, case_dir, mode="sliding"),
                "whole": run(f"{name} whole", ckpt, case_dir, mode="whole"),
            }
        result: dict[str, Any] = {
            "benchmark": "predict",
            "date": now_iso(),
            "machine": machine_info("cpu", threads),
            "case_shape": list(shape),
            "window": list(WINDOW),
            "overlap": 0.5,
            "repeats": repeats,
            "memory_budget_gb": memory_budget_gb,
            "models": entries,
        }
        result["ratios_to_segresnet"] = _ratios(entries)

        if variants and "transmed_full" in models:
            ckpt = root / "transmed_full.pt"
            nocl = make_checkpoint("transmed_full", root / "tf_nocl.pt", channels_last=False)
            result["variants"] = {
                "fp32 (default)": entries["transmed_full"]["whole"],
                "bf16 autocast": run("bf16", ckpt, case_dir, mode="whole", precision="bf16"),
                "channels_last off": run("no channels_last", nocl, case_dir, mode="whole"),
                "1 thread": run("1 thread", ckpt, case_dir, mode="whole", threads=1),
                "torch.compile": run("compile", ckpt, case_dir, mode="whole", compile=True),
            }

        if scales and "transmed_full" in models:
            scaling = {}
            for s in scales:
                side = tuple(max(16, round(n * s ** (1 / 3))) for n in shape)
                case = case_dir if s == 1.0 else make_case(root / f"case_{s}", side)
                entry = (
                    entries["transmed_full"]["whole"]
                    if s == 1.0
                    else run(f"scale {s}", root / "transmed_full.pt", case, mode="whole")
                )
                scaling[str(s)] = {"shape": list(side), "voxels": math.prod(side), **entry}
            result["scaling"] = scaling
            result["scaling_exponent"] = scaling_exponent(scaling)
    return result


def _median(entry: dict[str, Any]) -> float | None:
    return entry["latency"]["median_s"] if entry.get("status") == "ok" else None


def _ratios(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ref = entries.get(REFERENCE, {})
    out: dict[str, Any] = {}
    for name, modes in entries.items():
        out[name] = {}
        for mode in ("whole", "sliding"):
            base = _median(ref.get(mode, {}))
            mine = _median(modes[mode])
            out[name][f"vs_{REFERENCE}_{mode}"] = mine / base if mine and base else None
        best = [m for m in (_median(modes["whole"]), _median(modes["sliding"])) if m]
        out[name]["best_s"] = min(best) if best else None
    return out


def _fmt(e: dict[str, Any]) -> str:
    if e.get("status") == "ok":
        lat = e["latency"]
        how = "whole volume" if e.get("window") is None else f"window {e['window']}"
        return (
            f"{lat['median_s']:.2f} s median of {lat['runs']} ({how}), peak RSS "
            f"{e['peak_rss_bytes'] / 2**30:.2f} GiB [{e['wall_s']:.0f} s]"
        )
    reason = str(e.get("reason", "")).splitlines()[0] if e.get("reason") else ""
    return f"{e.get('status')}: {reason} [{e.get('wall_s', 0):.0f} s]"


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report: main table, ratios, stage breakdown, variants, scaling."""
    from transmed.bench.results import machine_markdown

    def cell(e: dict[str, Any]) -> str:
        if e.get("status") != "ok":
            return f"— ({str(e.get('reason', e.get('status'))).splitlines()[0][:60]})"
        return f"{e['latency']['median_s']:.2f} s / {e['peak_rss_bytes'] / 2**30:.2f} GiB"

    lines = [
        "# `transmed predict`: end-to-end latency per case",
        "",
        machine_markdown(result["machine"], result["date"]),
        "",
        f"One synthetic {'×'.join(map(str, result['case_shape']))} 4-modality case (BraTS 2021 "
        "layout, int16 NIfTI). Per case: read → preprocess → infer → back onto the input grid → "
        "post-process → write; the model is loaded once, before. Median of "
        f"{result['repeats']} cases after one warm-up (1 case when the warm-up took over "
        f"{SLOW_RUN_S:.0f} s), each model in its own process; peak RSS = whole process. "
        f"Sliding window: {result['window'][0]}³ windows, overlap {result['overlap']}, Gaussian. "
        f"Whole volume where the memory estimate fits {result['memory_budget_gb']:.0f} GiB. "
        "Command: `transmed bench predict`.",
        "",
        "| model | params | whole volume (median / peak RSS) | sliding window | "
        "whole ÷ SegResNet whole | whole ÷ SegResNet sliding |",
        "|---|---:|---|---|---:|---:|",
    ]
    for name, modes in result["models"].items():
        r = result["ratios_to_segresnet"][name]
        w = _median(modes["whole"])
        ref_s = _median(result["models"].get(REFERENCE, {}).get("sliding", {}))
        params = modes["sliding"].get("params") or modes["whole"].get("params") or 0
        vs_sw = f"{w / ref_s:.2f}×" if w and ref_s else "—"
        vs_w = f"{r['vs_segresnet_whole']:.2f}×" if r.get("vs_segresnet_whole") else "—"
        lines.append(
            f"| {name} | {params / 1e6:.1f} M | {cell(modes['whole'])} | "
            f"{cell(modes['sliding'])} | {vs_w} | {vs_sw} |"
        )
    lines += [
        "",
        "Stage medians (s), whole volume where it ran, else sliding window:",
        "",
        "| model | network grid | read | preprocess | infer | restore | write |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, modes in result["models"].items():
        e = modes["whole"] if modes["whole"].get("status") == "ok" else modes["sliding"]
        if e.get("status") != "ok":
            continue
        st = e["stages_median_s"]
        lines.append(
            f"| {name} | {'×'.join(map(str, e['network_shape']))} | "
            + " | ".join(
                f"{st[k]:.2f}" for k in ("read", "preprocess", "infer", "restore", "write")
            )
            + " |"
        )
    if result.get("variants"):
        base = _median(result["variants"]["fp32 (default)"])
        lines += [
            "",
            "## Speed choices (transmed_full, whole volume)",
            "",
            "| variant | median | vs default | peak RSS |",
            "|---|---:|---:|---:|",
        ]
        for label, e in result["variants"].items():
            m = _median(e)
            lines.append(
                f"| {label} | {m:.2f} s | {m / base:.2f}× | {e['peak_rss_bytes'] / 2**30:.2f} GiB |"
                if m and base
                else f"| {label} | — | — | {cell(e)} |"
            )
    if result.get("scaling"):
        lines += [
            "",
            "## Scaling with the voxel count (transmed_full, whole volume)",
            "",
            "| voxels (× BraTS) | input shape | network grid | median | s per Mvoxel |",
            "|---:|---|---|---:|---:|",
        ]
        for s, e in result["scaling"].items():
            m = _median(e)
            if m is None:
                lines.append(f"| {s} | {e['shape']} | — | {cell(e)} | — |")
                continue
            net = math.prod(e["network_shape"])
            lines.append(
                f"| {s} | {'×'.join(map(str, e['shape']))} | "
                f"{'×'.join(map(str, e['network_shape']))} | {m:.2f} s | "
                f"{m / (net / 1e6):.3f} |"
            )
        slope = scaling_exponent(result["scaling"])
        if slope is not None:
            lines += [
                "",
                f"Growth exponent between the smallest and largest case: time ∝ "
                f"(network voxels)^{slope:.2f} (1.00 = linear).",
            ]
    return "\n".join(lines) + "\n"


def scaling_exponent(scaling: dict[str, Any]) -> float | None:
    """log-log slope of median time against network voxels between the extreme scales."""
    ok = [(math.prod(e["network_shape"]), _median(e)) for e in scaling.values() if _median(e)]
    if len(ok) < 2:
        return None
    (v0, t0), (v1, t1) = min(ok), max(ok)
    return math.log(t1 / t0) / math.log(v1 / v0) if v1 > v0 else None
