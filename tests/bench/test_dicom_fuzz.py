"""A bounded run of the DICOM fuzzer: mutated real and synthetic instances through the reader
and the node's C-STORE check get only the project's own errors (fixed seed, a few seconds).

The long run is ``python benchmarks/dicom_fuzz.py`` (result in benchmarks/results/).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from transmed.bench.dicom_fuzz import MUTATIONS, fuzz, make_seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory):
    return make_seeds(tmp_path_factory.mktemp("fuzz"))


def test_mutated_instances_get_only_the_projects_own_errors(seeds) -> None:
    report = fuzz(seeds, cases=48, seed=15)
    assert report.cases == 48
    shown = "\n".join(f"{d.target} {d.seed} {d.mutation}: {d.error} at {d.where}"
                      for d in report.unique_defects())  # fmt: skip
    assert report.defects == [], shown
    # the run exercised both sides of both targets, and every mutation
    for outcome in ("reader:DicomError", "reader:accepted", "node:InstanceRefused"):
        assert report.outcomes[outcome] > 0, report.outcomes
    assert set(report.mutations) == set(MUTATIONS)


def test_the_fuzzer_reports_a_crash_as_a_defect(seeds, monkeypatch) -> None:
    """The check can fail: a reader that raises KeyError on a mutated file is reported."""
    import transmed.bench.dicom_fuzz as fz

    def crashing_reader(folder: Path) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(fz, "read_with_reader", crashing_reader)
    report = fuzz(seeds, cases=3, seed=0)
    assert [d.target for d in report.defects] == ["reader"] * 3
    assert report.defects[0].error.startswith("KeyError")


def test_seeds_are_restored_and_read_cleanly(seeds) -> None:
    fuzz(seeds, cases=5, seed=1)
    for seed in seeds:
        assert seed.target.read_bytes() == seed.original
    assert MUTATIONS["truncate"](seeds[0].original, random.Random(0)) != seeds[0].original
