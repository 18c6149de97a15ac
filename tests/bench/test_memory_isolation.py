from __future__ import annotations

import json
import sys

import pytest
import torch

from transmed.bench.isolation import run_isolated
from transmed.bench.memory import MemoryProbe, meminfo_bytes
from transmed.bench.results import machine_info, write_results, write_text_atomic

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


@linux_only
def test_memory_probe_sees_an_allocation_after_the_baseline_only() -> None:
    big = torch.ones(64 * 2**20)  # 256 MiB touched before the baseline, then freed
    del big
    probe = MemoryProbe("cpu")
    probe.runtime()
    probe.baseline()  # resets the high-water mark: the 256 MiB above must not count
    t = torch.ones(32 * 2**20)  # 128 MiB during the "forward"
    del t
    rep = probe.report()
    assert rep.method == "rss-hwm-reset"
    assert 120 * 2**20 <= rep.forward_peak_bytes < 250 * 2**20
    assert rep.peak_bytes == rep.baseline_bytes + rep.forward_peak_bytes


@linux_only
def test_meminfo_reads_bytes(tmp_path) -> None:
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       1000 kB\nMemAvailable:    250 kB\n")
    assert meminfo_bytes("MemAvailable", str(fake)) == 250 * 1024
    assert meminfo_bytes("Nope", str(fake)) is None
    assert meminfo_bytes("MemAvailable") > 0


def test_run_isolated_returns_the_child_result_and_reports_errors() -> None:
    ok = run_isolated("transmed.bench.timing.summarize_times", {"times": [1.0, 3.0]})
    assert ok["median_s"] == 2.0
    err = run_isolated("transmed.bench.timing.summarize_times", {"times": []})
    assert err["status"] == "error" and "ValueError" in err["reason"]


def test_run_isolated_kills_a_child_that_runs_too_long() -> None:
    res = run_isolated("subprocess.run", {"args": ["sleep", "5"]}, timeout_s=1.0)
    assert res["status"] == "error" and "timed out" in res["reason"]


def test_write_results_is_atomic_and_replaces(tmp_path) -> None:
    write_text_atomic(tmp_path / "a.md", "old")
    paths = write_results(tmp_path, "a", {"x": 1}, "new\n")
    assert json.loads(paths["json"].read_text()) == {"x": 1}
    assert paths["markdown"].read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.md"]  # no temp files left


def test_machine_info_names_cpu_torch_and_threads() -> None:
    info = machine_info("cpu", threads=2)
    assert info["torch_version"] == torch.__version__ and info["torch_threads"] == 2
    assert info["cpu_model"] and info["usable_cores"] >= 1
