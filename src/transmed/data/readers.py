"""One reader per dataset layout: list a folder's cases (file paths only, no voxels read).

Layouts (see :data:`LAYOUT_HELP` for the file patterns):

- ``brats2021``: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 1 NCR, 2 ED, 4 ET. Any
  case folder name is accepted (BraTS 2020's ``BraTS20_Training_001`` and clinical exports
  such as ``TCGA-FG-6692/TCGA-FG-6692_t1.nii.gz`` read the same way), and ``t1c`` is accepted
  for ``t1ce``.
- ``brats2023``: ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` for every task prefix
  (``BraTS-GLI-…``, ``BraTS-MEN-…``, MET, PED, SSA), labels 1 NETC, 2 SNFH, 3 ET.
- ``msd``: Task01_BrainTumour, ``imagesTr/<case>.nii.gz`` 4D (channel order from dataset.json's
  ``"modality"``, default FLAIR, T1w, T1gd, T2w), ``labelsTr/``, ``imagesTs/`` unlabelled.
- ``nnunet``: nnU-Net v2 raw (v1's ``"modality"`` key is accepted too), ``imagesTr/<case>_
  <XXXX><file_ending>``, channels mapped by dataset.json's ``"channel_names"``, labels by its
  ``"labels"`` (see :func:`transmed.data.dataset_json.convention_from_labels`). nnU-Net's
  ``"dataset"`` key (explicit file lists) is not supported.

A folder that is itself one BraTS case (``<case>/<case>_t1.nii.gz`` …) is read as a one-case
dataset. Hidden files (macOS ``._*`` copies in the MSD archive) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from transmed.data.cases import Case
from transmed.data.dataset_json import (
    channel_modalities,
    convention_from_labels,
    read_dataset_json,
)
from transmed.data.labels import MODALITIES

#: File-name suffix(es) of each modality and of the label; the first spelling is the official one.
BRATS_SUFFIXES: dict[str, dict[str, tuple[str, ...]]] = {
    "brats2021": {
        "t1": ("t1",),
        "t1ce": ("t1ce", "t1c"),
        "t2": ("t2",),
        "flair": ("flair",),
        "seg": ("seg",),
    },
    "brats2023": {
        "t1": ("t1n",),
        "t1ce": ("t1c",),
        "t2": ("t2w",),
        "flair": ("t2f",),
        "seg": ("seg",),
    },
}
_SEPARATOR = {"brats2021": "_", "brats2023": "-"}
#: MSD Task01_BrainTumour's channel order when dataset.json does not say.
MSD_DEFAULT_CHANNELS: dict[str, int] = {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}

LAYOUT_HELP: dict[str, str] = {
    "brats2021": "case folders <case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz "
    "(e.g. BraTS2021_00000/BraTS2021_00000_t1.nii.gz)",
    "brats2023": "case folders <case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz "
    "(e.g. BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz)",
    "msd": "dataset.json with 'modality' + imagesTr/<case>.nii.gz (4D) + labelsTr/<case>.nii.gz",
    "nnunet": "dataset.json with 'channel_names' + imagesTr/<case>_0000.nii.gz + "
    "labelsTr/<case>.nii.gz",
}
Problems = list[tuple[str, str]]


def _stem(path: Path, ending: str | None = None) -> str | None:
    """File name without its NIfTI ending, or None for hidden files and other endings."""
    name = path.name
    if name.startswith(".") or not path.is_file():
        return None
    for end in (ending,) if ending else (".nii.gz", ".nii"):
        if name.endswith(end):
            return name[: -len(end)]
    return None


def nifti_files(folder: Path, ending: str | None = None) -> dict[str, list[Path]]:
    """``{stem: [files]}`` of the NIfTI files in ``folder`` (a stem may have .nii and .nii.gz)."""
    found: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            stem = _stem(path, ending)
            if stem is not None:
                found.setdefault(stem, []).append(path)
    return found


def _pick(files: dict[str, list[Path]], stems: tuple[str, ...]) -> list[Path]:
    return [p for s in stems for p in files.get(s, [])]


def brats_matches(folder: Path, layout: str) -> int:
    """How many of the layout's modality/label files ``folder`` holds for its own name."""
    files = nifti_files(folder)
    sep = _SEPARATOR[layout]
    stems = {f"{folder.name}{sep}{s}" for v in BRATS_SUFFIXES[layout].values() for s in v}
    return len(stems & set(files))


def _brats_case(folder: Path, layout: str, problems: Problems) -> Case:
    files = nifti_files(folder)
    sep = _SEPARATOR[layout]
    images: dict[str, Path] = {}
    missing: dict[str, Path] = {}
    label = None
    for key, suffixes in BRATS_SUFFIXES[layout].items():
        found = _pick(files, tuple(f"{folder.name}{sep}{s}" for s in suffixes))
        if len(found) > 1:
            problems.append((folder.name, f"ambiguous {key} files: {', '.join(map(str, found))}"))
        if key == "seg":
            label = found[0] if found else None
        elif found:
            images[key] = found[0]
        else:
            missing[key] = folder / f"{folder.name}{sep}{suffixes[0]}.nii.gz"
    return Case(folder.name, layout, images, label=label, missing=missing)


def _scan_brats(layout: str) -> Callable[[Path], tuple[list[Case], Problems]]:
    def scan(root: Path) -> tuple[list[Case], Problems]:
        problems: Problems = []
        if brats_matches(root, layout):  # the folder is itself one case
            return [_brats_case(root, layout, problems)], problems
        cases = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if brats_matches(sub, layout):
                cases.append(_brats_case(sub, layout, problems))
            elif nifti_files(sub):
                problems.append(
                    (str(sub), f"holds NIfTI files but none named {LAYOUT_HELP[layout]}")
                )
        return cases, problems

    return scan


def json_if_any(root: Path) -> dict | None:
    path = root / "dataset.json"
    return read_dataset_json(path) if path.is_file() else None


def _scan_msd(root: Path) -> tuple[list[Case], Problems]:
    meta = json_if_any(root) or {}
    source = root / "dataset.json"
    channels = (
        channel_modalities(meta["modality"], source=source)
        if "modality" in meta
        else dict(MSD_DEFAULT_CHANNELS)
    )
    n_channels = len(meta["modality"]) if "modality" in meta else len(MSD_DEFAULT_CHANNELS)
    convention = (
        convention_from_labels(meta["labels"], name="msd", source=source, names_are_keys=False)
        if "labels" in meta
        else None
    )
    problems: Problems = []
    cases: list[Case] = []
    for subset, images_dir, labels_dir in (
        ("train", "imagesTr", "labelsTr"),
        ("test", "imagesTs", "labelsTs"),
    ):
        labels = nifti_files(root / labels_dir)
        for case_id, paths in nifti_files(root / images_dir).items():
            if len(paths) > 1:
                problems.append((case_id, f"ambiguous image files: {', '.join(map(str, paths))}"))
            label = labels.pop(case_id, [None])[0]
            images = {m: paths[0] for m in MODALITIES if m in channels}
            missing = {m: source for m in MODALITIES if m not in channels}
            cases.append(
                Case(
                    case_id,
                    "msd",
                    images,
                    label,
                    convention,
                    {m: channels[m] for m in images},
                    n_channels,
                    missing,
                    subset,
                )
            )
        problems += [(str(p[0]), "label without a matching image") for p in labels.values()]
    known = {c.case_id for c in cases}
    for entry in meta.get("training", []):
        image = entry.get("image") if isinstance(entry, dict) else None
        if image and _stem(Path(image)) not in known and not (root / image).is_file():
            problems.append((str(root / image), "listed in dataset.json 'training' but missing"))
    return cases, problems


def _scan_nnunet(root: Path) -> tuple[list[Case], Problems]:
    source = root / "dataset.json"
    if not source.is_file():
        raise ValueError(f"{root}: nnU-Net layout needs {source} (channel names, labels)")
    meta = read_dataset_json(source)
    channel_names = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channel_names, dict):
        raise ValueError(f"{source}: no 'channel_names' (or v1 'modality') object")
    channels = channel_modalities(channel_names, source=source)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise ValueError(f"{source}: file_ending {ending!r} not supported (only .nii.gz, .nii)")
    convention = None
    if "labels" in meta:
        keys_are_values = all(str(k).isdigit() for k in meta["labels"])  # nnU-Net v1 style
        convention = convention_from_labels(
            meta["labels"], name="nnunet", source=source, names_are_keys=not keys_are_values
        )
    declared = {int(k) for k in channel_names}
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
    problems: Problems = []
    cases: list[Case] = []
    for subset, images_dir, labels_dir in (
        ("train", "imagesTr", "labelsTr"),
        ("test", "imagesTs", "labelsTs"),
    ):
        labels = nifti_files(root / labels_dir, ending)
        grouped: dict[str, dict[int, Path]] = {}
        for stem, paths in nifti_files(root / images_dir, ending).items():
            match = pattern.match(stem)
            if match is None:
                problems.append((str(paths[0]), f"not named <case>_<XXXX>{ending}"))
                continue
            grouped.setdefault(match["case"], {})[int(match["channel"])] = paths[0]
        for case_id, files in grouped.items():
            extra = sorted(set(files) - declared)
            if extra:
                problems.append((case_id, f"channel(s) {extra} not declared in {source}"))
            images = {m: files[i] for m, i in channels.items() if i in files}
            missing = {
                m: root / images_dir / f"{case_id}_{channels[m]:04d}{ending}"
                for m in MODALITIES
                if m not in images
            }
            label = labels.pop(case_id, [None])[0]
            cases.append(
                Case(case_id, "nnunet", images, label, convention, missing=missing, subset=subset)
            )
        problems += [(str(p[0]), "label without a matching image") for p in labels.values()]
    n_train = meta.get("numTraining")
    found = sum(c.subset == "train" for c in cases)
    if isinstance(n_train, int) and n_train != found:
        problems.append((str(source), f"numTraining is {n_train} but imagesTr has {found} cases"))
    return cases, problems


#: Layout name -> reader returning ``(cases, problems)``.
SCANNERS: dict[str, Callable[[Path], tuple[list[Case], Problems]]] = {
    "brats2021": _scan_brats("brats2021"),
    "brats2023": _scan_brats("brats2023"),
    "msd": _scan_msd,
    "nnunet": _scan_nnunet,
}
