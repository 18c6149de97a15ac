"""Atomic writes: a failure mid-write keeps the old file and leaves no temp file behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from transmed.io.atomic import FILE_MODE, atomic_write, atomic_write_text
from transmed.io.nifti import load_volume, save_volume


def test_replaces_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "result.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert os.stat(path).st_mode & 0o777 == FILE_MODE
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_crash_keeps_old_file_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    atomic_write_text(path, "good")

    def half_then_crash(fh) -> None:
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill or Ctrl-C in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_nifti_save_is_atomic_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "seg.nii.gz"
    affine = np.diag([1.0, 1.2, 2.5, 1.0])
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    save_volume(data, affine, path)
    vol = load_volume(path, dtype=np.uint8)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.spacing == pytest.approx((1.0, 1.2, 2.5))

    import nibabel as nib

    def broken_save(img, filename) -> None:
        Path(filename).write_bytes(b"\x1f\x8b truncated")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_volume(data * 2, affine, path)
    np.testing.assert_array_equal(load_volume(path, dtype=np.uint8).data, data)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]
