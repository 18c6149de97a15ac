"""Fixtures for the inference tests: tiny datasets in every layout and tiny checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The fake dataset writers are shared with the data-layer tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

from fake_layouts import write_dataset  # noqa: E402


@pytest.fixture
def dataset(tmp_path: Path):
    """``dataset(layout, n=2, **kw) -> (root, case_ids)``: a fake dataset of 12³ cases."""
    counter = iter(range(1000))

    def make(layout: str, n: int = 2, **kwargs: object) -> tuple[Path, list[str]]:
        root = tmp_path / f"{layout}_{next(counter)}"
        root.mkdir()
        return root, write_dataset(root, layout, n, **kwargs)  # type: ignore[arg-type]

    return make
