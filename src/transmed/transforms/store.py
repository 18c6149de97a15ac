"""On-disk form of preprocessed cases: ``{case_id}.npz`` + ``{case_id}.json``, written atomically.

The ``.npz`` holds ``image`` ``(4, D, H, W) float32`` and, when the case has one, ``label``
``(D, H, W) uint8``; the ``.json`` holds the :class:`PreprocessRecord` (needed to put a
prediction back on the original grid). A folder of these plus ``dataset.json`` is what
``transmed data preprocess`` writes and what training reads (nnU-Net's "plan and preprocess").
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from transmed.io.atomic import atomic_write
from transmed.transforms.preprocess import PreprocessedCase, PreprocessRecord

#: Refuse arrays with more voxels than this per channel when reading (≈ 512³).
MAX_VOXELS = 512**3




def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2).encode()
    return atomic_write(Path(path), lambda fh: fh.write(text), ".json")


def save_arrays(path: str | Path, image: np.ndarray, label: np.ndarray | None) -> Path:
    """Write ``image`` (float32) and optional ``label`` (uint8) to a ``.npz`` atomically."""
    arrays = {"image": np.asarray(image, dtype=np.float32)}
    if label is not None:
        arrays["label"] = np.asarray(label, dtype=np.uint8)
    return atomic_write(Path(path), lambda fh: np.savez_compressed(fh, **arrays), ".npz")


def save_case(case: PreprocessedCase, out_dir: str | Path, case_id: str) -> tuple[Path, Path]:
    """Write ``{case_id}.npz`` and ``{case_id}.json`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    npz = save_arrays(out_dir / f"{case_id}.npz", case.image, case.label)
    record = write_json(case.record.to_dict(), out_dir / f"{case_id}.json")
    return npz, record


def load_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``(image (C, D, H, W) float32, label (D, H, W) uint8 | None)`` from a ``.npz``.

    Raises:
        ValueError: unreadable file, missing ``image``, wrong dimensions or too many voxels.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):  # np.load would try .npy or pickle on anything else
        raise ValueError(f"{path}: not a .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "image" not in data.files:
                raise ValueError(f"{path}: no 'image' array (has {data.files})")
            image = data["image"]
            label = data["label"] if "label" in data.files else None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    if image.ndim != 4 or int(np.prod(image.shape[1:])) > MAX_VOXELS:
        raise ValueError(f"{path}: image must be (C, D, H, W) within the cap, got {image.shape}")
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"{path}: label shape {label.shape} != image shape {image.shape[1:]}")
    return image.astype(np.float32, copy=False), None if label is None else label.astype(np.uint8)


def load_record(path: str | Path) -> PreprocessRecord:
    """Read a :class:`PreprocessRecord` from its ``.json``; ``ValueError`` naming the file."""
    path = Path(path)
    try:
        return PreprocessRecord.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a preprocessing record ({exc})") from None
