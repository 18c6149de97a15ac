"""Fixtures for the evaluation tests: tiny label volumes written as NIfTI files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from transmed.io.nifti import save_volume


def _tumour(shape: tuple[int, int, int] = (16, 16, 12), shift: int = 0) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[3 + shift:12 + shift, 3:12, 2:10] = 2
    lab[5 + shift:10 + shift, 5:10, 4:8] = 1
    lab[6 + shift:9 + shift, 6:9, 5:7] = 4
    return lab


@pytest.fixture
def tumour() -> Callable[..., np.ndarray]:
    """``tumour(shape=(16, 16, 12), shift=0)``: a nested BraTS 2021 label map (values 1 NCR,
    2 ED, 4 ET; WT 9x9x8, TC 5x5x4, ET 3x3x2 voxels) shifted by ``shift`` voxels along x."""
    return _tumour


@pytest.fixture
def write_label() -> Callable[..., Path]:
    """``write_label(path, data, spacing=(1, 1, 1), offset=(0, 0, 0)) -> path`` (uint8 NIfTI)."""

    def write(
        path: Path,
        data: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> Path:
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = offset
        return save_volume(np.asarray(data, dtype=np.uint8), affine, path)

    return write
