"""Fixtures for the dataset-reader tests; the fake datasets themselves are in fake_layouts.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fake_layouts import write_dataset


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., tuple[Path, list[str]]]:
    """``make_dataset(layout, n=2, **kw) -> (root, case_ids)`` in a fresh folder of tmp_path."""
    counter = iter(range(1000))

    def make(layout: str, n: int = 2, **kwargs: object) -> tuple[Path, list[str]]:
        root = tmp_path / f"{layout}_{next(counter)}"
        root.mkdir()
        return root, write_dataset(root, layout, n, **kwargs)  # type: ignore[arg-type]

    return make
