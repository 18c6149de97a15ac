"""``transmed bench service-load``: the DICOM node under load and over time.

Two phases, one node (in this process, the model loaded once):

- **burst**: ``concurrent`` studies sent at once, one association each, until every SEG is
  delivered;
- **soak**: for ``soak_s`` seconds a new study arrives every ``interval_s`` (a sender never
  runs more than ``max_outstanding`` studies ahead of the deliveries, so a slow spell of a
  shared CPU does not turn the soak into an ever-growing queue; each such wait is counted).

The destination is a C-STORE SCP in this process (pynetdicom) that records every SEG it
receives by the Study Instance UID it references, so "each study's SEG delivered exactly
once" is checked at the receiving end, through the node's real DICOM sender. Every
``sample_s`` seconds the process's RSS, open descriptors and threads are sampled with the
node's queue and byte gauges. At the end the storage folder must hold no instances, no
outputs, no outbox items and no quarantine, and the node's budgets must be back at zero.

Studies are synthetic 4-series MR studies (:func:`~transmed.data.synth.dicom.write_dicom_study`,
``templates`` of them written once), read into memory by each sender and sent again and again
with fresh Study, Series and SOP Instance UIDs, so each arrival is a new study to the node.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer

DEFAULT_OUT = Path("benchmarks/results")


def _proc_status() -> dict[str, float]:
    """RSS (MiB), open descriptors and threads of this process (Linux ``/proc``)."""
    rss = threads = 0.0
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return {"rss_mib": rss, "fds": float(len(os.listdir("/proc/self/fd"))), "threads": threads}


class SegReceiver:
    """A C-STORE SCP that records the SEGs it receives: study UID -> count."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seg_uids: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> int:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import SegmentationStorage

        ae = AE(ae_title="LOADPACS")
        ae.add_supported_context(SegmentationStorage)
        ae.maximum_associations = 20
        self._server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return int(self._server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        with self._lock:
            self.counts[str(ds.StudyInstanceUID)] += 1
            self.seg_uids[str(ds.SOPInstanceUID)] += 1
        return 0x0000

    def delivered(self, study_uid: str) -> int:
        with self._lock:
            return self.counts.get(study_uid, 0)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


class StudySender:
    """One synthetic study in memory, sent again and again under fresh UIDs."""

    def __init__(self, folder: Path, port: int) -> None:
        from pydicom import dcmread

        self.port = port
        self.datasets = [dcmread(p) for p in sorted(folder.rglob("*.dcm"))]

    def send(self) -> str:
        """Send the study as a new one (one association); return its Study Instance UID."""
        from pydicom.uid import generate_uid
        from pynetdicom import AE
        from pynetdicom.sop_class import MRImageStorage

        study = generate_uid()
        series: dict[str, str] = {}
        for ds in self.datasets:
            ds.StudyInstanceUID = study
            old = str(ds.SeriesInstanceUID)
            ds.SeriesInstanceUID = series.setdefault(old, generate_uid())
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ae = AE(ae_title="LOADSCU")
        syntax = str(self.datasets[0].file_meta.TransferSyntaxUID)
        ae.add_requested_context(MRImageStorage, [syntax])
        assoc = ae.associate("127.0.0.1", self.port, ae_title="TRANSMED")
        if not assoc.is_established:
            raise RuntimeError("the node refused the association")
        try:
            for ds in self.datasets:
                status = assoc.send_c_store(ds)
                # pynetdicom answers an empty Dataset when no response came (DIMSE timeout,
                # aborted association): a failed send, not a crash of the benchmark
                if status is None or "Status" not in status:
                    raise RuntimeError("C-STORE: no response (timed out or association aborted)")
                if int(status.Status) != 0:
                    raise RuntimeError(f"C-STORE status 0x{int(status.Status):04X}")
        finally:
            assoc.release()
        return study


def _flatness(samples: list[dict[str, float]], key: str, warmup_s: float) -> dict[str, float]:
    """Spread of ``key`` after the warm-up: min, max, median, (max − min) / median, and the
    least-squares slope per hour."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        return {}
    values = [s[key] for s in after]
    times = [s["t_s"] for s in after]
    med = statistics.median(values)
    mt, mv = statistics.fmean(times), statistics.fmean(values)
    var = sum((t - mt) ** 2 for t in times)
    cov = sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True))
    slope = cov / var if var else 0.0
    return {
        "min": min(values),
        "max": max(values),
        "median": med,
        "spread_pct": 100.0 * (max(values) - min(values)) / med if med else 0.0,
        "first": values[0],
        "last": values[-1],
        "slope_per_h": slope * 3600.0,
    }


def run_load_benchmark(
    checkpoint: Path,
    workdir: Path,
    *,
    shape: tuple[int, int, int] = (160, 160, 100),
    concurrent: int = 8,
    soak_s: float = 1800.0,
    interval_s: float = 20.0,
    max_outstanding: int = 3,
    quiet_period_s: float = 2.0,
    sample_s: float = 5.0,
    warmup_s: float = 300.0,
    templates: int = 2,
    note: str = "",
    stop_file: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the burst and the soak described in the module docstring; return the record."""
    if stop_file is not None and Path(stop_file).exists():  # a stale one would end the soak at 0
        raise ValueError(f"the stop file {stop_file} already exists: remove it before the run")
    from transmed.bench.results import machine_info, now_iso
    from transmed.data.synth.dicom import write_dicom_study
    from transmed.inference.predictor import Predictor
    from transmed.service.config import config_from_dict
    from transmed.service.orthanc import free_port
    from transmed.service.service import DicomNode

    started = time.perf_counter()
    predictor = Predictor.from_path(checkpoint)
    receiver = SegReceiver()
    pacs_port = receiver.start()
    n_templates = min(concurrent, templates)
    for n in range(n_templates):  # each sender holds its own copy in memory
        write_dicom_study(workdir / f"template{n}", shape=shape, seed=n, spacing=(1.2, 1.2, 1.5))
    node_port = free_port()
    config = config_from_dict(
        {
            "ae_title": "TRANSMED",
            "dicom_port": node_port,
            "http_port": 0,
            "storage_dir": str(workdir / "node"),
            "model": str(checkpoint),
            "quiet_period_s": quiet_period_s,
            "queue_size": 2,
            "max_associations": concurrent + 2,
            "retry": {"initial_s": 0.5, "max_s": 5.0},
            "destination": {
                "type": "dicom",
                "ae_title": "LOADPACS",
                "host": "127.0.0.1",
                "port": pacs_port,
            },
        }
    )
    senders = [
        StudySender(workdir / f"template{n % n_templates}", node_port) for n in range(concurrent)
    ]
    instances = len(senders[0].datasets)
    log(f"study: 4 series of {shape} voxels, {instances} instances")
    sent: list[str] = []
    samples: list[dict[str, float]] = []
    errors: list[str] = []
    stop_sampling = threading.Event()
    t_origin = time.perf_counter()
    phase = {"name": "start"}

    def delivered_all() -> bool:
        return all(receiver.delivered(s) >= 1 for s in sent)

    with DicomNode(config, predictor=predictor) as node:

        def sample() -> None:
            while True:
                row = {"t_s": time.perf_counter() - t_origin, **_proc_status()}
                g = node.metrics.snapshot()
                row.update(
                    sent=float(len(sent)),
                    delivered=float(sum(receiver.counts.values())),
                    queue=float(g.get("queue_length", 0)),
                    storage_bytes=float(g.get("storage_bytes", 0)),
                    receiving_bytes=float(node.listener.receive_budget.used),
                )
                row["phase"] = phase["name"]  # type: ignore[assignment]
                row["healthy"] = float(node.health()[0])  # the loopback self-check included
                samples.append(row)
                if stop_sampling.wait(sample_s):
                    return

        sampler = threading.Thread(target=sample, name="load-sampler", daemon=True)
        sampler.start()

        # burst: every sender at once
        phase["name"] = "burst"
        t0 = time.perf_counter()
        burst: list[str] = []

        def send_one(s: StudySender) -> None:
            try:
                uid = s.send()
                burst.append(uid)
                sent.append(uid)
            except Exception as exc:
                errors.append(f"burst: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=send_one, args=(s,)) for s in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_sent = time.perf_counter() - t0
        while not delivered_all():
            time.sleep(0.5)
            if time.perf_counter() - t0 > 3600:
                errors.append("burst: not all SEGs within an hour")
                break
        burst_s = time.perf_counter() - t0
        log(f"burst: {concurrent} studies sent in {t_sent:.1f} s, all SEGs after {burst_s:.1f} s")

        # soak: one study every interval_s, never more than max_outstanding ahead
        phase["name"] = "soak"
        t_soak = time.perf_counter()
        soak_origin = t_soak - t_origin
        throttled = 0
        soak_sent = 0
        k = 0
        while time.perf_counter() - t_soak < soak_s:
            if stop_file is not None and stop_file.exists():
                log(f"soak: stopped early by {stop_file}")
                break
            next_at = t_soak + soak_sent * interval_s
            while time.perf_counter() < next_at:
                time.sleep(0.2)
            while sum(1 for s in sent if receiver.delivered(s) == 0) >= max_outstanding:
                throttled += 1
                time.sleep(1.0)
            if time.perf_counter() - t_soak >= soak_s:
                break
            try:
                sent.append(senders[k % len(senders)].send())
                soak_sent += 1
            except Exception as exc:
                errors.append(f"soak: {type(exc).__name__}: {exc}")
            k += 1
            if soak_sent % 10 == 0:
                elapsed = time.perf_counter() - t_soak
                log(f"soak: {soak_sent} studies sent after {elapsed:.0f} s")
        soak_ran_s = time.perf_counter() - t_soak
        phase["name"] = "drain"
        t_drain = time.perf_counter()
        while not delivered_all() and time.perf_counter() - t_drain < 900:
            time.sleep(0.5)
        time.sleep(2 * quiet_period_s + 2.0)  # any duplicate would come now
        stop_sampling.set()
        sampler.join()
        final = _proc_status()
        snapshot = node.metrics.snapshot()
        storage = config.storage_dir
        leftovers = {
            "incoming_files": sum(1 for p in (storage / "incoming").rglob("*") if p.is_file()),
            "job_inputs": sum(1 for p in (storage / "jobs").glob("*/input")),
            "job_outputs": sum(1 for p in (storage / "jobs").glob("*/output")),
            "outbox_pending": node.outbox.pending_count(),
            "quarantine": sum(1 for _ in (storage / "quarantine").glob("*"))
            if (storage / "quarantine").is_dir()
            else 0,
            "storage_budget_bytes": node.budget.used,
            "receive_budget_bytes": node.listener.receive_budget.used,
        }
        states = Counter(r.state for r in node.jobs.all())
    receiver.stop()
    counts = [receiver.delivered(s) for s in sent]
    exactly_once = {
        "studies_sent": len(sent),
        "segs_received": sum(receiver.counts.values()),
        "lost": sum(1 for c in counts if c == 0),
        "duplicated": sum(1 for c in counts if c > 1),
        "unexpected_studies": len(set(receiver.counts) - set(sent)),
        "seg_uids_repeated": sum(1 for c in receiver.seg_uids.values() if c > 1),
        "job_states": dict(states),
    }
    soak_samples = [s for s in samples if s.get("phase") in ("soak", "drain")]
    warm = soak_origin + warmup_s
    return {
        "date": now_iso(),
        "machine": machine_info("cpu", threads=None),
        "checkpoint": checkpoint.name,
        "study": {"shape": list(shape), "series": 4, "instances": instances},
        "settings": {
            "concurrent": concurrent,
            "soak_s": soak_s,
            "interval_s": interval_s,
            "max_outstanding": max_outstanding,
            "quiet_period_s": quiet_period_s,
            "sample_s": sample_s,
            "warmup_s": warmup_s,
            "templates": n_templates,
        },
        "note": note,
        "burst": {"studies": concurrent, "all_sent_s": t_sent, "all_delivered_s": burst_s},
        "soak": {
            "ran_s": soak_ran_s,
            "studies_sent": soak_sent,
            "throttle_waits_s": throttled,
            "studies_per_min": 60.0 * soak_sent / soak_ran_s if soak_ran_s else 0.0,
        },
        "exactly_once": exactly_once,
        "leftovers": leftovers,
        "flatness_after_warmup": {
            k: _flatness(soak_samples, k, warm) for k in ("rss_mib", "fds", "threads")
        },
        "final": final,
        "node_metrics": snapshot,
        "errors": errors,
        "samples": samples,
        "wall_s": time.perf_counter() - started,
    }


def load_markdown(r: dict[str, Any]) -> str:
    """The result as a Markdown report."""
    from transmed.bench.results import machine_markdown

    s, b, e, f = r["settings"], r["burst"], r["exactly_once"], r["flatness_after_warmup"]
    shape = "×".join(map(str, r["study"]["shape"]))
    ok = e["lost"] == 0 and e["duplicated"] == 0 and e["unexpected_studies"] == 0
    clean = all(v == 0 for v in r["leftovers"].values())
    lines = [
        f"# DICOM node under load and over time ({r['date']})",
        "",
        machine_markdown(r["machine"], r["date"]),
        "",
        f"Model: `{r['checkpoint']}` (untrained, timing and plumbing only). Study: 4 series of "
        f"{shape} voxels ({r['study']['instances']} instances). Destination: a recording "
        "C-STORE SCP in the same process, reached through the node's DICOM sender. Command: "
        "`transmed bench service-load` (see `docs/service.md`). " + r.get("note", ""),
        "",
        "## Burst",
        "",
        f"{b['studies']} studies sent at once (one association each): all sent after "
        f"{b['all_sent_s']:.1f} s, every SEG delivered after {b['all_delivered_s']:.1f} s.",
        "",
        "## Soak",
        "",
        f"Ran **{r['soak']['ran_s'] / 60:.1f} min** (asked: {s['soak_s'] / 60:.1f} min): "
        f"{r['soak']['studies_sent']} studies, one every {s['interval_s']:.0f} s at most, never "
        f"more than {s['max_outstanding']} undelivered ({r['soak']['throttle_waits_s']} s spent "
        f"waiting for that); {r['soak']['studies_per_min']:.2f} studies/min.",
        "",
        "| after a warm-up of " + f"{s['warmup_s']:.0f} s | first | last | min | max | spread "
        "| slope per hour |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("rss_mib", "RSS (MiB)"), ("fds", "open descriptors"),
                       ("threads", "threads")):  # fmt: skip
        v = f.get(key) or {}
        if v:
            lines.append(
                f"| {label} | {v['first']:.0f} | {v['last']:.0f} | {v['min']:.0f} | "
                f"{v['max']:.0f} | {v['spread_pct']:.1f}% | {v['slope_per_h']:+.1f} |"
            )
    lines += [
        "",
        "## Exactly once, nothing left behind",
        "",
        f"{e['studies_sent']} studies sent, {e['segs_received']} SEGs received: "
        f"**{e['lost']} lost, {e['duplicated']} duplicated**, {e['unexpected_studies']} for "
        f"unknown studies, {e['seg_uids_repeated']} SEG UIDs received twice "
        f"({'pass' if ok else 'FAIL'}). "
        f"Job states: {e['job_states']}.",
        "",
        "Left in storage after the drain: "
        + ", ".join(f"{k} {v}" for k, v in r["leftovers"].items())
        + f" ({'clean' if clean else 'NOT CLEAN'}).",
        "",
        f"Errors: {len(r['errors'])}" + (f" (first: {r['errors'][0]})" if r["errors"] else ""),
        "",
        f"Total wall time {r['wall_s'] / 60:.1f} min. Samples every {s['sample_s']:.0f} s are in "
        "the JSON (`samples`).",
        "",
    ]
    return "\n".join(lines)


def service_load_cmd(
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Model to serve (default: an untrained tiny transmed_full)."
    ),
    shape: tuple[int, int, int] = typer.Option(
        (160, 160, 100), "--shape", help="Voxels per series (X Y slices)."
    ),
    concurrent: int = typer.Option(8, "--concurrent", min=1, help="Studies in the burst."),
    soak: float = typer.Option(1800.0, "--soak", min=0.0, help="Soak duration (s)."),
    interval: float = typer.Option(20.0, "--interval", min=0.1, help="Seconds between studies."),
    max_outstanding: int = typer.Option(3, "--max-outstanding", min=1),
    warmup: float = typer.Option(300.0, "--warmup", min=0.0, help="Soak warm-up (s)."),
    note: str = typer.Option("", "--note", help="A sentence on the conditions, for the report."),
    stop_file: Path = typer.Option(
        None, "--stop-file", help="End the soak early (results kept) once this file exists."
    ),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the JSON and Markdown."),
) -> None:
    """The DICOM node under load: a burst of concurrent studies, then a soak with studies
    arriving continuously (RSS, descriptors, threads; every SEG delivered exactly once)."""
    from transmed.bench.results import write_results
    from transmed.bench.service import make_untrained_checkpoint
    from transmed.cli_errors import user_errors

    with user_errors(), tempfile.TemporaryDirectory(prefix="transmed-bench-load-") as tmp:
        work = Path(tmp)
        if checkpoint is None:
            checkpoint = make_untrained_checkpoint(work / "untrained_tiny.pt", "tiny")
        result = run_load_benchmark(
            checkpoint,
            work,
            shape=shape,
            concurrent=concurrent,
            soak_s=soak,
            interval_s=interval,
            max_outstanding=max_outstanding,
            warmup_s=warmup,
            note=note,
            stop_file=stop_file,
            log=typer.echo,
        )
        md = load_markdown(result)
        paths = write_results(out, "service_load", result, md)
        typer.echo(md)
        typer.echo(f"Wrote {paths['json']} and {paths['markdown']}")
