"""Writing synthetic cases in the BraTS 2021 layout, and the rule for existing case folders.

``DIR/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz`` plus ``generation.json``.
Every file is written atomically (temp file + rename, via :func:`transmed.io.nifti.save_volume`
for the images, which uses nibabel's default gzip level 1: level 6 costs ~3x the time for ~2 %
smaller files). ``generation.json`` is written last, so its presence marks a complete case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from transmed.data.synth.case import SynthCase, case_id
from transmed.data.synth.contrast import MODALITY_ORDER
from transmed.io.atomic import atomic_write_text
from transmed.io.nifti import save_volume

SIDECAR = "generation.json"
FILE_KINDS: tuple[str, ...] = (*MODALITY_ORDER, "seg")


def case_files(folder: Path) -> dict[str, Path]:
    """The five NIfTI paths of the case in ``folder``, keyed by modality / ``seg``."""
    return {k: folder / f"{folder.name}_{k}.nii.gz" for k in FILE_KINDS}


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds the sidecar and all five NIfTI files."""
    return (folder / SIDECAR).is_file() and all(p.is_file() for p in case_files(folder).values())


def _write_json_atomic(data: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_case(case: SynthCase, out_dir: str | Path) -> Path:
    """Write ``case`` under ``out_dir/<case_id>/``; return that folder."""
    folder = Path(out_dir) / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    files = case_files(folder)
    for name, data in case.images.items():
        save_volume(data, case.affine, files[name])
    save_volume(np.asarray(case.seg, dtype=np.uint8), case.affine, files["seg"])
    _write_json_atomic(case.params, folder / SIDECAR)
    return folder


def plan_folders(
    out_dir: Path, n_cases: int, *, skip_existing: bool
) -> tuple[list[Path], list[int]]:
    """Case folders of a cohort and the indices still to generate.

    Existing non-empty case folders are never overwritten: with ``skip_existing`` a complete
    one is kept as is (resuming an interrupted run), otherwise any non-empty one is an error.

    Raises:
        ValueError: ``out_dir`` is a file, or non-empty case folders that may not be reused.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a folder")
    folders = [out_dir / case_id(i) for i in range(n_cases)]
    todo, clashes = [], []
    for i, folder in enumerate(folders):
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            if skip_existing and folder.is_dir() and is_complete(folder):
                continue
            clashes.append(folder.name)
        else:
            todo.append(i)
    if clashes:
        shown = ", ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else "")
        hint = "" if skip_existing else " (pass skip_existing=True to keep complete ones)"
        raise ValueError(
            f"{out_dir}: {len(clashes)} case folder(s) already exist and are not empty, refusing "
            f"to overwrite: {shown}{hint}"
        )
    return folders, todo
