"""Benchmark result files: the machine they were measured on, and atomic JSON/Markdown writes.

Every result file carries the machine (CPU model, cores, memory, torch version and threads) and
the date, so a number is never read without the hardware it came from.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from transmed.io.atomic import atomic_write_text


def cpu_model_name() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def total_memory_bytes() -> int | None:
    """Physical memory from ``/proc/meminfo`` (bytes), ``None`` where unavailable."""
    from transmed.bench.memory import meminfo_bytes

    return meminfo_bytes("MemTotal")


def machine_info(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Describe the machine a benchmark runs on.

    Args:
        device: ``"cpu"`` or ``"cuda"``; for CUDA the GPU name is added.
        threads: the torch intra-op thread count the measurements use (``None``: torch's default).
    """
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model_name(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_total_bytes": total_memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_threads": int(threads) if threads else torch.get_num_threads(),
        "device": device,
        "load_average_1min": _load_average(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_version"] = torch.version.cuda
    return info


def _load_average() -> float | None:
    # Other processes competing for the cores distort timings; record how busy the machine was.
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def now_iso() -> str:
    """The local date and time with its UTC offset, to the second (ISO 8601)."""
    return _dt.datetime.now().astimezone().replace(microsecond=0).isoformat()


def machine_markdown(machine: dict[str, Any], date: str) -> str:
    """A one-paragraph Markdown description of ``machine_info()`` and the date."""
    mem = machine.get("memory_total_bytes")
    mem_txt = f", {mem / 2**30:.1f} GiB RAM" if mem else ""
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (
        f"Measured {date} on {machine['cpu_model']} ({machine['usable_cores']} usable of "
        f"{machine['logical_cores']} logical cores{mem_txt}{gpu}), torch "
        f"{machine['torch_version']} with {machine['torch_threads']} thread(s), device "
        f"`{machine['device']}`, Python {machine['python']}"
        + (
            f"; 1-minute load average {machine['load_average_1min']} at the start."
            if machine.get("load_average_1min") is not None
            else "."
        )
    )


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :mod:`transmed.io.atomic`)."""
    return atomic_write_text(path, text)


def write_results(out_dir: str | Path, stem: str, data: dict[str, Any], markdown: str) -> dict:
    """Write ``<stem>.json`` and ``<stem>.md`` atomically into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    json_path = write_text_atomic(
        out_dir / f"{stem}.json", json.dumps(data, indent=2, sort_keys=False) + "\n"
    )
    md_path = write_text_atomic(out_dir / f"{stem}.md", markdown)
    return {"json": json_path, "markdown": md_path}
