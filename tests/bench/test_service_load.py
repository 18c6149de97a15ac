"""The DICOM-node load benchmark's guards (the run itself is a benchmark, not a test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from transmed.bench.service_load import run_load_benchmark


def test_a_stale_stop_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    stop = tmp_path / "soak.stop"
    stop.touch()  # left over from an earlier run: it would end the soak after 0 s
    with pytest.raises(ValueError, match="already exists"):
        run_load_benchmark(tmp_path / "missing.pt", tmp_path / "work", stop_file=stop)
    assert not (tmp_path / "work").exists()  # nothing was written or started
