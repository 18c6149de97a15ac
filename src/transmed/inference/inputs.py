"""What ``transmed predict`` was given: one case, a folder of cases, modality files, or DICOM.

Everything becomes a list of :class:`~transmed.data.cases.Case` (file paths, no voxels read),
so batch mode and single cases share one path. A case with a problem (a missing modality, a
header over the voxel cap ...) fails alone when it is loaded; the batch goes on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from transmed.data.cases import LAYOUTS, Case
from transmed.data.labels import MODALITIES
from transmed.data.layouts import detect_layout, index_dataset
from transmed.io.nifti import DEFAULT_MAX_VOXELS

_NIFTI = re.compile(r"\.nii(\.gz)?$")
_MODALITY_SUFFIX = re.compile(r"[_\-.](t1|t1ce|t1c|t1n|t2|t2w|t2f|flair)$", re.IGNORECASE)


@dataclass
class PredictInput:
    """Resolved input: the cases to predict (or a DICOM folder) and their layout."""

    kind: str  # "nifti" or "dicom"
    layout: str
    cases: list[Case] = field(default_factory=list)
    dicom_folder: Path | None = None


def _looks_like_dicom(folder: Path, limit: int = 50) -> bool:
    """True when the folder has DICOM files (pydicom's ``is_dicom``: ``DICM`` at byte 128) and
    no NIfTI files; looks at ``limit`` files at most."""
    from pydicom.misc import is_dicom

    for seen, path in enumerate(p for p in sorted(folder.rglob("*")) if p.is_file()):
        if _NIFTI.search(path.name):
            return False
        try:
            if not path.name.startswith(".") and is_dicom(path):
                return True
        except OSError:  # unreadable: not evidence either way
            pass
        if seen + 1 >= limit:
            break
    return False


def case_id_from_files(files: Mapping[str, Path]) -> str:
    """A case id for loose modality files: the t1ce (or first) file's name less its ending and
    modality suffix (``P01_t1ce.nii.gz`` → ``P01``)."""
    path = Path(files.get("t1ce") or next(iter(files.values())))
    stem = _NIFTI.sub("", path.name)
    return _MODALITY_SUFFIX.sub("", stem) or stem


def resolve_inputs(
    input_path: str | Path | None = None,
    modality_files: Mapping[str, str | Path] | None = None,
    *,
    layout: str = "auto",
    case_id: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> PredictInput:
    """Turn the command line's input into cases.

    Args:
        input_path: a case folder in any supported layout, a dataset folder (batch mode), an
            MSD/nnU-Net ``imagesTs``/``imagesTr`` folder, or a folder of DICOM files.
        modality_files: instead of ``input_path``, one NIfTI file per modality (all four).
        layout: ``"auto"`` or one of :data:`~transmed.data.cases.LAYOUTS`; for modality files
            it only picks the output label convention (default ``brats2021``).
        case_id: the case id (file name) for modality files.

    Raises:
        ValueError: no input, both kinds of input, a missing path, a missing modality file, or
            a folder that is no recognised layout (the message lists what was looked for).
    """
    files = {k: Path(v) for k, v in (modality_files or {}).items() if v is not None}
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {list(LAYOUTS)}")
    if files and input_path is not None:
        raise ValueError("give either --input or the per-modality files (--t1 ...), not both")
    if files:
        unknown = sorted(set(files) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected {list(MODALITIES)}")
        missing = [m for m in MODALITIES if m not in files]
        if "t1ce" in missing:  # other series may be missing if the model accepts it (checked
            # when the case is preprocessed, with the model's own rule)
            raise ValueError(
                f"missing modality file(s): {', '.join('--' + m for m in missing)} "
                "(--t1ce is always required)"
            )
        for modality, path in files.items():
            if not path.is_file():
                raise ValueError(f"{path}: {modality} file does not exist")
        out_layout = "brats2021" if layout == "auto" else layout
        cid = case_id or case_id_from_files(files)
        case = Case(case_id=cid, layout=out_layout,
                    images={m: files[m] for m in MODALITIES if m in files})  # fmt: skip
        return PredictInput("nifti", out_layout, [case])
    if input_path is None:
        raise ValueError("nothing to predict: give --input PATH or --t1/--t1ce/--t2/--flair")
    root = Path(input_path)
    if not root.exists():
        raise ValueError(f"{root}: input does not exist")
    if root.is_file():
        raise ValueError(
            f"{root}: a single file; give a case folder, a dataset folder, or one file per "
            "modality with --t1 --t1ce --t2 --flair"
        )
    subset = None
    if root.name in ("imagesTs", "imagesTr") and not (root / "imagesTr").exists():
        subset = "test" if root.name == "imagesTs" else "train"
        root = root.parent
    if layout == "auto":
        try:
            layout = detect_layout(root)
        except ValueError:
            if _looks_like_dicom(root):
                return PredictInput("dicom", "dicom", dicom_folder=root)
            raise
    index = index_dataset(root, layout, max_voxels=max_voxels)
    # Prediction reads no labels; each case's headers are checked again when it is loaded, so a
    # bad case fails alone (with its file named) while the others run.
    cases = [replace(c, label=None) for c in index.cases if subset in (None, c.subset)]
    if not cases:
        raise ValueError(f"{input_path}: no cases to predict")
    return PredictInput("nifti", layout, cases)
