"""Reading the ``dataset.json`` of MSD and nnU-Net folders: channel order and label convention.

Names in these files are free text (``"T1w"``, ``"t1gd"``, ``"FLAIR"``, ``"non-enhancing
tumor"``...), so they are matched against lists of common spellings; a name that matches none
is refused with a ValueError naming the file, never guessed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from transmed.data.labels import MODALITIES, LabelConvention

#: Accepted spellings of each modality, after lower-casing and removing everything but a-z0-9.
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w", "t1native", "nativet1", "t1pre", "t1precontrast"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1wce", "t1post", "t1postcontrast", "t1contrast", "t1gad"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2flair", "t2wflair"),
}
_ALIAS_TO_MODALITY = {a: m for m, aliases in MODALITY_ALIASES.items() for a in aliases}


def read_dataset_json(path: Path) -> dict[str, Any]:
    """Parse a dataset.json; ValueError naming the file when it is not a JSON object."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return content


def modality_from_name(name: str, *, source: str | Path = "channel name") -> str:
    """The internal modality (one of :data:`MODALITIES`) for a channel name such as ``"T1-Gd"``."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    try:
        return _ALIAS_TO_MODALITY[key]
    except KeyError:
        spellings = "; ".join(f"{m}: {', '.join(a)}" for m, a in MODALITY_ALIASES.items())
        raise ValueError(
            f"{source}: channel name {name!r} is not a known MRI modality (accepted spellings, "
            f"ignoring case and punctuation: {spellings})"
        ) from None


def channel_modalities(channels: dict[str, Any], *, source: str | Path) -> dict[str, int]:
    """``{modality: channel_index}`` from a ``{"0": "T1", "1": "T1ce", ...}`` dict.

    Raises:
        ValueError: naming ``source`` for non-integer keys, unknown names or a modality given
            twice.
    """
    out: dict[str, int] = {}
    for key, name in channels.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: channel key {key!r} is not an integer") from None
        modality = modality_from_name(name, source=source)
        if modality in out:
            raise ValueError(
                f"{source}: channels {out[modality]} and {index} are both {modality} "
                f"({name!r}); each modality may appear once"
            )
        out[modality] = index
    return {m: out[m] for m in MODALITIES if m in out}


def _class_of(name: str) -> int | None:
    """Internal class for a tumour class name, or None when the name is not recognised."""
    text = re.sub(r"[^a-z0-9]+", " ", str(name).lower()).strip()
    words = set(text.split())
    if words & {"background", "bg"} or text == "clear label":
        return 0
    # "non-enhancing" must be tested before "enhancing".
    if re.search(r"non ?enhanc", text) or "necro" in text or words & {"ncr", "netc", "net"}:
        return 1
    if "edema" in text or "oedema" in text or words & {"ed", "snfh"}:
        return 2
    if "enhanc" in text or words & {"et"}:
        return 3
    return None


def _as_int_set(value: Any, *, source: str | Path, name: str) -> set[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        return {int(v) for v in items}
    except (TypeError, ValueError):
        raise ValueError(f"{source}: label {name!r} has non-integer value(s) {value!r}") from None


def _regions_convention(
    regions: dict[str, set[int]], *, name: str, source: str | Path
) -> LabelConvention:
    """nnU-Net region-based BraTS labels -> convention, using the nesting WT ⊇ TC ⊇ ET.

    The three regions are ordered by size (largest = WT); each file value v in WT maps to ET (3)
    if v is in ET, else to core (1) if v is in TC, else to oedema (2). Names are not trusted
    for this, only the nesting.
    """
    if len(regions) != 3:
        raise ValueError(
            f"{source}: region-style labels need exactly three tumour regions (WT ⊇ TC ⊇ ET), "
            f"got {sorted(regions)}"
        )
    wt, tc, et = sorted(regions.values(), key=len, reverse=True)
    if not (et < tc < wt) or 0 in wt:
        raise ValueError(
            f"{source}: region-style labels {regions} are not strictly nested "
            "(whole tumour ⊋ tumour core ⊋ enhancing tumour, background excluded)"
        )
    mapping = {v: (3 if v in et else 1 if v in tc else 2) for v in wt}
    return LabelConvention.from_dict(name, mapping)


def convention_from_labels(
    labels: dict[str, Any], *, name: str, source: str | Path, names_are_keys: bool = True
) -> LabelConvention:
    """A label convention from a dataset.json ``"labels"`` dict.

    Handles three forms:

    - nnU-Net v2 class style, ``{"background": 0, "edema": 1, "non-enhancing tumor": 2, ...}``:
      each class name is matched to an internal class (see ``_class_of``; several names may map
      to the same class);
    - nnU-Net v2 region style (its region-based BraTS training), ``{"background": 0,
      "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}``: detected by a
      list value; resolved by nesting (see :func:`_regions_convention`);
    - MSD / nnU-Net v1, ``{"0": "background", "1": "edema", ...}`` (``names_are_keys=False``).

    Raises:
        ValueError: naming ``source`` for names that match no tumour class, a region set that is
            not nested, or a convention that lacks one of the three tumour classes.
    """
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{source}: 'labels' must be a non-empty object")
    pairs = list(labels.items()) if names_are_keys else [(str(v), k) for k, v in labels.items()]
    if names_are_keys and any(isinstance(v, (list, tuple)) for _, v in pairs):
        regions = {n: _as_int_set(v, source=source, name=n) for n, v in pairs if _class_of(n) != 0}
        return _regions_convention(regions, name=name, source=source)
    mapping: dict[int, int] = {}
    for label_name, value in pairs:
        file_value = min(_as_int_set(value, source=source, name=label_name))
        internal = _class_of(label_name)
        if internal is None:
            raise ValueError(
                f"{source}: label name {label_name!r} (value {file_value}) matches no tumour "
                "class (background; necrotic/non-enhancing core; edema/SNFH; enhancing)"
            )
        if (internal == 0) != (file_value == 0):
            raise ValueError(
                f"{source}: label {label_name!r} has value {file_value}; only background may "
                "(and must) use the value 0"
            )
        mapping[file_value] = internal
    try:
        return LabelConvention.from_dict(name, mapping)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
