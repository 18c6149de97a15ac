"""Dataset-level preprocessing and augmentation, the bodies of ``transmed data preprocess|augment``.

``preprocess_dataset`` reads a raw dataset (any layout :mod:`transmed.data.layouts` knows) and
writes, per case, ``{case_id}.npz`` + ``{case_id}.json`` and a ``dataset.json`` summary.
``augment_dataset`` reads such a preprocessed folder (not raw data: augmentation works on the
network grid, after z-scoring, exactly as on-the-fly augmentation does in training) and writes
``factor`` samples per case as ``{case_id}_aug{k}.npz`` (sample 0 is the unaugmented case unless
``include_original=False``) plus a ``dataset.json``. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import statistics
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from transmed.progress import progress_bar
from transmed.transforms.preprocess import MODALITIES, PreprocessConfig, preprocess_case
from transmed.transforms.store import load_arrays, save_arrays, save_case, write_json

DATASET_JSON = "dataset.json"


def _safe_id(case_id: str) -> str:
    if not case_id or "/" in case_id or "\\" in case_id or case_id.startswith("."):
        raise ValueError(f"case id {case_id!r} cannot be used as a file name")
    return case_id


def preprocess_dataset(
    data_dir: str | Path,
    out_dir: str | Path,
    config: PreprocessConfig | None = None,
    *,
    layout: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess every complete case of ``data_dir`` into ``out_dir``; return the summary.

    Incomplete cases (reported by the index) are listed under ``"skipped"``; cases that fail
    preprocessing with a ``ValueError`` under ``"failed"``; the others under ``"cases"``.

    Raises:
        ValueError: ``data_dir`` holds no usable case.
    """
    from transmed.data.layouts import index_dataset, load_case

    config = config or PreprocessConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    index = index_dataset(data_dir, layout=layout, strict=False, progress=progress)
    cases = index.good_cases  # cases with a header problem are listed under "skipped"
    if not cases:
        problems = "; ".join(f"{key}: {msg}" for key, msg in index.problems)
        raise ValueError(f"{data_dir}: no usable case found ({problems})")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for case in progress_bar(cases, desc="preprocess", unit="case", disable=not progress):
        try:
            volumes = load_case(case)
            case_id = _safe_id(volumes.case_id)
            result = preprocess_case(volumes.images, volumes.label, config, case_id=case_id)
        except ValueError as exc:
            failed.append({"case": case.case_id, "error": str(exc)})
            continue
        save_case(result, out_dir, case_id)
        entries.append(
            {
                "case_id": case_id,
                "image": f"{case_id}.npz",
                "record": f"{case_id}.json",
                "shape": list(result.record.shape),
                "spacing": list(result.record.spacing),
                "has_label": result.label is not None,
                "foreground": result.record.foreground,
            }
        )
    summary: dict[str, Any] = {
        "kind": "preprocessed",
        "version": 1,
        "source": str(data_dir),
        "layout": str(index.layout),
        "modalities": list(MODALITIES),
        "config": dataclasses.asdict(config),
        "cases": entries,
        "skipped": [f"{key}: {msg}" for key, msg in index.problems],
        "failed": failed,
    }
    if entries:
        summary["median_shape"] = [
            statistics.median(e["shape"][a] for e in entries) for a in range(3)
        ]
    write_json(summary, out_dir / DATASET_JSON)
    return summary


def read_preprocessed_summary(data_dir: str | Path) -> dict[str, Any]:
    """Read ``dataset.json`` of a preprocessed folder; ``ValueError`` if it is not one."""
    import json

    path = Path(data_dir) / DATASET_JSON
    if not path.is_file():
        raise ValueError(
            f"{data_dir}: no {DATASET_JSON}; augmentation reads a preprocessed folder "
            "(run `transmed data preprocess` first)"
        )
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if summary.get("kind") != "preprocessed" or not isinstance(summary.get("cases"), list):
        raise ValueError(f"{path}: not the summary of a preprocessed dataset")
    return summary


def sample_seed(seed: int, case_id: str, k: int) -> int:
    """Seed of sample ``k`` of a case: independent of the case order and of other cases."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(case_id.encode()), int(k)])
    return int(state.generate_state(1)[0])


def augment_dataset(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    factor: int = 5,
    seed: int = 0,
    config: Any = None,
    include_original: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``factor`` samples per preprocessed case of ``data_dir`` into ``out_dir``.

    Args:
        config: an :class:`~transmed.transforms.augment.AugmentConfig` (its seed is ignored:
            each sample gets :func:`sample_seed` of ``seed``).
        include_original: sample 0 of each case is the case itself.

    Raises:
        ValueError: ``data_dir`` is not a preprocessed folder, or ``factor`` < 1.
    """
    from transmed.transforms.augment import AugmentConfig, augment_sample

    if factor < 1:
        raise ValueError(f"augment factor must be >= 1, got {factor}")
    config = config or AugmentConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    summary = read_preprocessed_summary(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    for entry in progress_bar(summary["cases"], desc="augment", unit="case", disable=not progress):
        case_id = _safe_id(str(entry["case_id"]))
        image, label = load_arrays(data_dir / str(entry["image"]))
        for k in range(factor):
            original = include_original and k == 0
            if original:
                new_image, new_label = image, label
            else:
                cfg = dataclasses.replace(config, seed=sample_seed(seed, case_id, k))
                new_image, new_label = augment_sample(image, label, cfg)
            name = f"{case_id}_aug{k}"
            save_arrays(out_dir / f"{name}.npz", new_image, new_label)
            samples.append(
                {
                    "sample_id": name,
                    "case_id": case_id,
                    "image": f"{name}.npz",
                    "augmented": not original,
                }
            )
    result = {
        "kind": "augmented",
        "version": 1,
        "source": str(data_dir),
        "factor": factor,
        "seed": seed,
        "include_original": include_original,
        "config": dataclasses.asdict(config),
        "samples": samples,
    }
    write_json(result, out_dir / DATASET_JSON)
    return result
