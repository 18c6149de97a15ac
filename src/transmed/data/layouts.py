"""Dataset layouts: detect which one a folder is, and index its cases with header checks.

The supported layouts and their file patterns are described in :mod:`transmed.data.readers`;
this module is the entry point the rest of the package uses (it re-exports loading and writing).
"""

from __future__ import annotations

import re
from pathlib import Path

from transmed.data.cases import LAYOUTS, Case, DatasetIndex
from transmed.data.loading import CaseVolumes, iter_cases, load_case
from transmed.data.readers import (
    LAYOUT_HELP,
    SCANNERS,
    brats_matches,
    json_if_any,
    nifti_files,
)
from transmed.data.validation import DEFAULT_MIN_OVERLAP, case_problems
from transmed.data.writing import write_prediction
from transmed.io.nifti import DEFAULT_MAX_VOXELS

# The reading API in one place; loading and writing live in their own modules.
__all__ = [
    "LAYOUTS",
    "Case",
    "CaseVolumes",
    "DatasetIndex",
    "detect_layout",
    "index_dataset",
    "iter_cases",
    "load_case",
    "write_prediction",
]


def _check_root(root: Path) -> None:
    if not root.exists():
        raise ValueError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise ValueError(f"{root}: dataset folder is empty")


def detect_layout(root: str | Path) -> str:
    """The layout of a dataset folder: one of :data:`LAYOUTS`.

    Raises:
        ValueError: for a missing or empty folder, or when no layout matches (the message lists
            each layout and the files it looked for).
    """
    root = Path(root)
    _check_root(root)
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        meta = json_if_any(root) or {}
        if "channel_names" in meta:
            return "nnunet"
        stems = list(nifti_files(root / "imagesTr")) + list(nifti_files(root / "imagesTs"))
        if stems and all(re.search(r"_\d{4}$", s) for s in stems):
            return "nnunet"
        if stems or "modality" in meta:
            return "msd"
    votes = {layout: 0 for layout in ("brats2021", "brats2023")}
    for folder in [root, *(p for p in root.iterdir() if p.is_dir())]:
        for layout in votes:
            votes[layout] += brats_matches(folder, layout) > 0
    best = max(votes, key=lambda k: votes[k])
    if votes[best]:
        return best
    looked = "; ".join(f"{name}: {help_}" for name, help_ in LAYOUT_HELP.items())
    raise ValueError(f"{root}: not a recognised dataset layout. Looked for {looked}")


def index_dataset(
    root: str | Path,
    layout: str = "auto",
    strict: bool = False,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    progress: bool = False,
) -> DatasetIndex:
    """List a dataset's cases and check every file header (no voxel data is read).

    Args:
        root: dataset folder.
        layout: one of :data:`LAYOUTS`, or ``"auto"`` to detect it.
        strict: raise when any case or file has a problem instead of only recording it.
        max_voxels: per-volume voxel cap applied to every header.
        min_overlap: least shared fraction of the modalities' world bounding boxes.
        progress: show a progress bar on stderr (one step per case).

    Raises:
        ValueError: missing/empty/unrecognised folder, unknown layout name, no cases found, an
            unusable dataset.json, or (with ``strict``) any recorded problem.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {list(LAYOUTS)}")
    else:
        _check_root(root)
    cases, problems = SCANNERS[layout](root)
    if not cases:
        raise ValueError(f"{root}: no {layout} cases found (looked for {LAYOUT_HELP[layout]})")
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            problems.append((case.case_id, "case id appears more than once"))
        seen.add(case.case_id)
    for subset in {c.subset for c in cases}:
        group = [c for c in cases if c.subset == subset]
        if any(c.has_label for c in group):
            problems += [
                (c.case_id, "missing label (other cases have one)")
                for c in group
                if not c.has_label
            ]
    iterator = cases
    if progress:
        from transmed.progress import progress_bar

        iterator = progress_bar(
            cases, desc="checking headers", unit="case", leave=False, disable=None
        )
    for case in iterator:
        problems += [
            (case.case_id, msg)
            for msg in case_problems(case, max_voxels=max_voxels, min_overlap=min_overlap)
        ]
    index = DatasetIndex(root=root, layout=layout, cases=cases, problems=problems)
    if strict and problems:
        lines = "\n".join(f"  {key}: {msg}" for key, msg in problems)
        raise ValueError(f"{root}: {len(problems)} problem(s) in the {layout} dataset:\n{lines}")
    return index
