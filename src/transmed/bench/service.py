"""``transmed bench service``: what the DICOM node adds over ``transmed predict``, and its
throughput with several studies in flight, against a real PACS (a private Orthanc).

Measured in one process on the CPU cores it is given (default 2; Orthanc inherits the
affinity, so PACS, network and inference share them as on a small hospital VM):

- ``transmed predict`` baseline: :func:`~transmed.inference.dicom.predict_dicom_study` on the
  study folder with the model already loaded (what the CLI does after start-up), median of
  the repeats; plus one wall time of the ``transmed predict`` command itself (process start,
  imports and model loading included).
- one study through the node: from Orthanc's "send to modality" until the SEG is stored in
  Orthanc (receive → quiet period → load → predict → SEG → C-STORE back), median of the
  repeats, with its breakdown. Added latency = that − the baseline.
- throughput: ``in_flight`` studies sent by Orthanc at once (concurrent associations) until
  all SEGs are stored; studies per minute, peak RSS of the process, queue high-water mark.

Every study is a fresh synthetic 4-series MR study (new UIDs), uploaded to Orthanc before
timing starts. The node's quiet period is part of the latency by design and reported apart.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import typer

DEFAULT_OUT = Path("benchmarks/results")


def make_untrained_checkpoint(path: Path, size: str) -> Path:
    """An untrained ``transmed_full`` checkpoint: ``tiny`` (features 8-64, 32³ patches, 2 mm
    network grid: the tests' model) or ``default`` (the registry's default width, 128³
    patches, the reference series' own spacing). Weights are random: timing only."""
    from dataclasses import asdict

    from transmed.models import create_model
    from transmed.models.checkpoint import save_checkpoint
    from transmed.transforms.preprocess import PreprocessConfig

    if size == "tiny":
        model = create_model("transmed_full", features=(8, 16, 32, 64))
        patch, prep = [32, 32, 32], PreprocessConfig(target_spacing=(2.0, 2.0, 2.0))
    elif size == "default":
        model = create_model("transmed_full")
        patch, prep = [128, 128, 128], PreprocessConfig()
    else:
        raise ValueError(f"untrained model size must be 'tiny' or 'default', got {size!r}")
    state = {
        "model": model.state_dict(),
        "model_config": model.config,
        "train_config": {"patch_size": patch},
        "preprocess_config": asdict(prep),
    }
    return save_checkpoint(path, state)


def _limit_cores(cores: int) -> list[int]:
    """Pin this process (and the children it starts) to its first ``cores`` usable CPUs."""
    try:
        usable = sorted(os.sched_getaffinity(0))
        chosen = usable[:cores]
        os.sched_setaffinity(0, chosen)
        return chosen
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))[:cores]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _wait_seg(pacs: Any, study_uid: str, timeout: float, step: float = 0.1) -> float:
    # Each poll is a query Orthanc answers on the same cores: every 0.1 s is a compromise
    # between the resolution of the latency and the load the polling adds.
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if pacs.seg_instances(study_uid):
            return time.perf_counter()
        time.sleep(step)
    raise RuntimeError(f"no SEG for study {study_uid} within {timeout} s")


def _cli_predict_wall(checkpoint: Path, study_dir: Path, out: Path, threads: int) -> float:
    """Wall time of ``transmed predict -m CKPT -i STUDY -o OUT`` (a DICOM study in: a SEG out).

    Raises:
        RuntimeError: the command failed (its output tail is in the message).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "transmed.cli", "predict", "-m", str(checkpoint),
           "-i", str(study_dir), "-o", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"transmed predict failed: {(proc.stdout + proc.stderr)[-500:]}")
    return wall


def run_service_benchmark(
    checkpoint: Path,
    workdir: Path,
    *,
    shape: tuple[int, int, int] = (128, 128, 96),
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0),
    repeats: int = 3,
    in_flight: int = 4,
    quiet_period_s: float = 1.0,
    cores: int = 2,
    cli_baseline: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Run the measurements described in the module docstring; return the result record."""
    import torch

    from transmed.bench.results import machine_info, now_iso
    from transmed.data.synth.dicom import write_dicom_study
    from transmed.inference.dicom import predict_dicom_study
    from transmed.inference.predictor import Predictor
    from transmed.service.config import config_from_dict
    from transmed.service.orthanc import OrthancServer, free_port
    from transmed.service.service import DicomNode

    started = time.perf_counter()
    pinned = _limit_cores(cores)
    torch.set_num_threads(len(pinned))
    predictor = Predictor.from_path(checkpoint)
    log(f"model {checkpoint.name}; {len(pinned)} core(s); study {shape} voxels per series")

    n_studies = 1 + repeats + in_flight  # warm-up, single-study repeats, concurrent batch
    studies = [
        write_dicom_study(workdir / f"study{n}", shape=shape, seed=n, spacing=spacing)
        for n in range(n_studies)
    ]
    folders = [workdir / f"study{n}" for n in range(n_studies)]

    # baseline: the predict path with the model in memory (warm-up first)
    predict_dicom_study(predictor, folders[0], workdir / "direct-warmup")
    direct = []
    for n in range(1, 1 + repeats):
        t0 = time.perf_counter()
        result = predict_dicom_study(predictor, folders[n], workdir / f"direct{n}")
        direct.append({"wall_s": time.perf_counter() - t0, **result.timings})
    predict_s = statistics.median(d["wall_s"] for d in direct)
    log(f"predict_dicom_study (model loaded): median {predict_s:.2f} s")
    cli_wall = None
    if cli_baseline:
        try:
            cli_wall = _cli_predict_wall(checkpoint, folders[1], workdir / "cli", len(pinned))
            log(f"`transmed predict` command: {cli_wall:.2f} s (start-up and loading included)")
        except RuntimeError as exc:  # the command's own problem must not void the rest
            log(f"`transmed predict` command not timed: {exc}")

    node_port = free_port()
    pacs = OrthancServer(workdir / "pacs", {"transmed": ("TRANSMED", "127.0.0.1", node_port)})
    pacs.start()
    try:
        orthanc_ids = [pacs.upload([p for fs in s.files.values() for p in fs]) for s in studies]
        config = config_from_dict(
            {
                "ae_title": "TRANSMED",
                "dicom_port": node_port,
                "http_port": None,
                "storage_dir": str(workdir / "node"),
                "model": str(checkpoint),
                "allowed_calling_aets": ["ORTHANC"],
                "quiet_period_s": quiet_period_s,
                "queue_size": 2,
                "retry": {"initial_s": 0.5, "max_s": 5.0},
                "destination": {
                    "type": "dicom",
                    "ae_title": pacs.aet,
                    "host": "127.0.0.1",
                    "port": pacs.dicom_port,
                },
            }
        )
        with DicomNode(config, predictor=predictor) as node:
            pacs.send_to_modality("transmed", orthanc_ids[0])  # warm-up, untimed
            _wait_seg(pacs, studies[0].study_uid, 600)

            single = []
            for n in range(1, 1 + repeats):
                t0 = time.perf_counter()
                pacs.send_to_modality("transmed", orthanc_ids[n])
                t_sent = time.perf_counter()
                t_seg = _wait_seg(pacs, studies[n].study_uid, 600)
                job = next(r for r in node.jobs.all() if r.study_uid == studies[n].study_uid)
                single.append(
                    {
                        "total_s": t_seg - t0,
                        "transfer_s": t_sent - t0,
                        "job_s": (job.finished_at or 0) - (job.started_at or 0),
                        **job.timings,
                    }
                )
                log(f"  study {n}: SEG in Orthanc after {t_seg - t0:.2f} s")
            service_s = statistics.median(s["total_s"] for s in single)

            batch = list(range(1 + repeats, n_studies))
            errors: list[BaseException] = []

            def send(i: int) -> None:
                try:
                    pacs.send_to_modality("transmed", orthanc_ids[i])
                except BaseException as exc:
                    errors.append(exc)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=send, args=(i,)) for i in batch]
            for t in threads:
                t.start()
            done = [_wait_seg(pacs, studies[i].study_uid, 1200) - t0 for i in batch]
            for t in threads:
                t.join()
            if errors:
                raise RuntimeError(f"Orthanc could not send a study: {errors[0]}")
            batch_s = max(done)
            snapshot = node.metrics.snapshot()
            high_water = node.queue.high_water
    finally:
        pacs.stop()
    return {
        "date": now_iso(),
        "machine": machine_info("cpu", threads=len(pinned)),
        "cores": pinned,
        "checkpoint": checkpoint.name,
        "study": {
            "shape": list(shape),
            "spacing_mm": list(spacing),
            "series": 4,
            "instances": 4 * shape[2],
        },
        "quiet_period_s": quiet_period_s,
        "predict": {"median_s": predict_s, "runs": direct, "cli_wall_s": cli_wall},
        "single_study": {
            "median_s": service_s,
            "added_s": service_s - predict_s,
            "added_beyond_quiet_period_s": service_s - predict_s - quiet_period_s,
            "runs": single,
        },
        "in_flight": {
            "studies": len(batch),
            "all_done_s": batch_s,
            "per_study_done_s": done,
            "studies_per_min": 60.0 * len(batch) / batch_s,
            "sequential_predict_estimate_s": len(batch) * predict_s,
            "queue_high_water": high_water,
            "queue_size": config.queue_size,
        },
        "peak_rss_mib": _peak_rss_mib(),
        "node_metrics": snapshot,
        "wall_s": time.perf_counter() - started,
    }


def service_markdown(r: dict[str, Any]) -> str:
    """The result as a Markdown report."""
    from transmed.bench.results import machine_markdown

    p, s, f = r["predict"], r["single_study"], r["in_flight"]
    med = {
        k: statistics.median(run.get(k, 0.0) for run in s["runs"])
        for k in ("transfer_s", "load_s", "predict_s", "write_s", "job_s")
    }
    base = {
        k: statistics.median(run.get(k, 0.0) for run in p["runs"])
        for k in ("load_s", "predict_s", "write_s")
    }
    single_alone = s["median_s"]
    cli = f"{p['cli_wall_s']:.2f}" if p.get("cli_wall_s") is not None else "not measured"
    shape = "×".join(map(str, r["study"]["shape"]))
    lines = [
        f"# DICOM node (`transmed serve`) latency and throughput ({r['date']})",
        "",
        machine_markdown(r["machine"], r["date"]),
        "",
        f"Model: `{r['checkpoint']}` (untrained weights: timing only). Study: 4 series of "
        f"{shape} voxels ({r['study']['instances']} instances), spacing "
        f"{r['study']['spacing_mm']} mm. PACS: a private Orthanc on the same cores. Quiet "
        f"period {r['quiet_period_s']:.1f} s. Command: `transmed bench service` (see "
        "`docs/service.md`).",
        "",
        "## One study: the node vs `transmed predict`",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| `predict_dicom_study`, model loaded (median of {len(p['runs'])}) | "
        f"{p['median_s']:.2f} |",
        f"| `transmed predict` command (start-up and model loading included) | {cli} |",
        "| Orthanc send → SEG stored in Orthanc, through the node (median) | "
        f"{s['median_s']:.2f} |",
        f"| **added by the node** | **{s['added_s']:.2f}** |",
        f"| added, beyond the quiet period ({r['quiet_period_s']:.1f} s) | "
        f"{s['added_beyond_quiet_period_s']:.2f} |",
        "",
        f"Breakdown (medians): C-STORE of the study from Orthanc {med['transfer_s']:.2f} s; "
        f"worker {med['job_s']:.2f} s (load {med['load_s']:.2f}, predict "
        f"{med['predict_s']:.2f}, SEG {med['write_s']:.2f}; the same steps outside the node: "
        f"{base['load_s']:.2f}, {base['predict_s']:.2f}, {base['write_s']:.2f}); the rest is "
        "the quiet period, the queue hand-off and the SEG's C-STORE back into Orthanc.",
        "",
        f"## {f['studies']} studies in flight",
        "",
        f"Orthanc sends {f['studies']} studies at once (concurrent associations); all SEGs "
        f"stored after {f['all_done_s']:.1f} s: **{f['studies_per_min']:.1f} studies/min** "
        f"({f['all_done_s'] / f['studies']:.1f} s per study, against {single_alone:.1f} s for "
        f"one study alone and {p['median_s']:.1f} s for its prediction alone). SEGs stored "
        f"after {', '.join(f'{t:.1f}' for t in f['per_study_done_s'])} s. Queue "
        f"high-water mark {f['queue_high_water']} of {f['queue_size']}; peak RSS of the "
        f"process {r['peak_rss_mib']:.0f} MiB (model, node, benchmark; Orthanc apart).",
        "",
        f"Total benchmark wall time {r['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def service_cmd(
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Model to serve (default: an untrained transmed_full)."
    ),
    untrained: str = typer.Option(
        "default", "--untrained", help="Without --checkpoint: 'default' or 'tiny' model size."
    ),
    shape: tuple[int, int, int] = typer.Option(
        (128, 128, 96), "--shape", help="Voxels per series (X Y slices)."
    ),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Single-study runs."),
    in_flight: int = typer.Option(4, "--in-flight", min=1, help="Studies sent at once."),
    quiet_period: float = typer.Option(1.0, "--quiet-period", min=0.1, help="Seconds."),
    cores: int = typer.Option(2, "--cores", min=1, help="CPU cores to pin the run to."),
    no_cli: bool = typer.Option(False, "--no-cli", help="Skip timing the predict command."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the JSON and Markdown."),
) -> None:
    """The DICOM node: added latency over `transmed predict`, throughput with studies in flight
    (needs Orthanc: `make system-deps`)."""
    from transmed.bench.results import write_results
    from transmed.cli_errors import user_errors
    from transmed.service.orthanc import find_orthanc

    with user_errors():
        if find_orthanc() is None:
            raise ValueError("Orthanc not found: `make system-deps` (apt-get install orthanc)")
        with tempfile.TemporaryDirectory(prefix="transmed-bench-service-") as tmp:
            work = Path(tmp)
            if checkpoint is None:
                checkpoint = make_untrained_checkpoint(
                    work / f"untrained_{untrained}.pt", untrained
                )
            result = run_service_benchmark(
                checkpoint,
                work,
                shape=shape,
                repeats=repeats,
                in_flight=in_flight,
                quiet_period_s=quiet_period,
                cores=cores,
                cli_baseline=not no_cli,
                log=typer.echo,
            )
        md = service_markdown(result)
        paths = write_results(out, "service", result, md)
        typer.echo(md)
        typer.echo(f"Wrote {paths['json']} and {paths['markdown']}")
