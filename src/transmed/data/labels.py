"""The one internal label convention, and conversion from/to each dataset layout's own labels.

Every stage after reading is layout-agnostic because it only ever sees:

- images in the fixed modality order :data:`MODALITIES` = ``(t1, t1ce, t2, flair)``;
- class maps with the internal labels 0 background, 1 necrotic / non-enhancing tumour core
  (BraTS 2021 NCR, BraTS 2023 NETC), 2 oedema (ED / SNFH), 3 enhancing tumour (ET);
- nested regions :data:`REGIONS` = ``(WT, TC, ET)``: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.

Each layout's file labels are described by a :class:`LabelConvention` (a map *file value ->
internal value*); :func:`to_internal` and :func:`from_internal` convert whole label maps with a
lookup table, refusing any value the convention does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Fixed modality order of every image stack after reading.
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: Nested evaluation regions, in channel order of :func:`labels_to_regions`.
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
#: Internal class labels (index = label value).
CLASS_NAMES: tuple[str, ...] = ("background", "necrotic/non-enhancing core", "oedema", "enhancing")
N_CLASSES = len(CLASS_NAMES)


@dataclass(frozen=True)
class LabelConvention:
    """How one layout stores the tumour classes: ``mapping[file_value] = internal_value``.

    Several file values may map to one internal class (then :func:`from_internal` writes the
    smallest of them); file value 0 must be background.
    """

    name: str
    mapping: tuple[tuple[int, int], ...]  # ((file_value, internal_value), ...), sorted

    def __post_init__(self) -> None:
        values = dict(self.mapping)
        if values.get(0, 0) != 0:
            raise ValueError(f"label convention {self.name!r}: file value 0 must be background")
        if any(v < 0 for v in values) or any(not 0 <= c < N_CLASSES for c in values.values()):
            raise ValueError(f"label convention {self.name!r}: bad mapping {values}")
        if set(values.values()) - {0} != {1, 2, 3}:
            raise ValueError(
                f"label convention {self.name!r}: must map a file value to each of the internal "
                f"classes 1, 2, 3, got {values}"
            )

    @classmethod
    def from_dict(cls, name: str, mapping: dict[int, int]) -> LabelConvention:
        """Build from ``{file_value: internal_value}``; background 0 -> 0 is added if absent."""
        full = {0: 0, **{int(k): int(v) for k, v in mapping.items()}}
        return cls(name=name, mapping=tuple(sorted(full.items())))

    @property
    def file_values(self) -> tuple[int, ...]:
        return tuple(v for v, _ in self.mapping)

    def inverse(self) -> dict[int, int]:
        """``{internal_value: file_value}``, the smallest file value for each internal class."""
        inv: dict[int, int] = {}
        for file_value, internal in self.mapping:
            inv.setdefault(internal, file_value)
        return inv


#: Built-in conventions, keyed like the layouts. nnU-Net's default is the one its own BraTS
#: conversions (Dataset001_BrainTumour from MSD, Dataset137_BraTS2021) write: 1 oedema,
#: 2 non-enhancing/necrotic, 3 enhancing, i.e. the MSD values; a dataset.json overrides it.
CONVENTIONS: dict[str, LabelConvention] = {
    "internal": LabelConvention.from_dict("internal", {1: 1, 2: 2, 3: 3}),
    "brats2021": LabelConvention.from_dict("brats2021", {1: 1, 2: 2, 4: 3}),
    "brats2023": LabelConvention.from_dict("brats2023", {1: 1, 2: 2, 3: 3}),
    "msd": LabelConvention.from_dict("msd", {1: 2, 2: 1, 3: 3}),
    "nnunet": LabelConvention.from_dict("nnunet", {1: 2, 2: 1, 3: 3}),
}


def get_convention(convention: str | LabelConvention) -> LabelConvention:
    """A :class:`LabelConvention` by name (see :data:`CONVENTIONS`), or the one passed."""
    if isinstance(convention, LabelConvention):
        return convention
    try:
        return CONVENTIONS[convention]
    except KeyError:
        raise ValueError(
            f"unknown label convention {convention!r}; expected one of {sorted(CONVENTIONS)}"
        ) from None


def _where(source: str | Path | None) -> str:
    return f"{source}: " if source is not None else "label map: "


def _describe(values: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _integer_labels(label_map: np.ndarray, source: str | Path | None) -> np.ndarray:
    """The map as a non-negative integer array after refusing non-finite, fractional and
    negative values."""
    arr = np.asarray(label_map)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{_where(source)}label map has non-numeric dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            raise ValueError(f"{_where(source)}label map contains non-finite values (NaN or Inf)")
        fractional = arr != np.rint(arr)
        if fractional.any():
            bad = np.unique(arr[fractional])
            raise ValueError(
                f"{_where(source)}label map contains fractional values {_describe(bad)}; "
                "labels must be integers"
            )
    if arr.size and arr.min() < 0:
        bad = np.unique(arr[arr < 0])
        raise ValueError(f"{_where(source)}label map contains negative values {_describe(bad)}")
    # Small unsigned/signed ints index a lookup table directly; only floats and 64-bit
    # unsigned maps are copied to int64.
    if np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.uint64:
        if arr.size and arr.max() > 2**31:  # no label convention goes there; avoid overflow
            bad = np.unique(arr[arr > 2**31])
            raise ValueError(f"{_where(source)}unexpected label values {_describe(bad)}")
        arr = arr.astype(np.int64)
    return arr


def _apply_lut(
    arr: np.ndarray, lut_map: dict[int, int], what: str, source: str | Path | None
) -> np.ndarray:
    """Map the non-negative integer ``arr`` through ``lut_map``; unknown values -> ValueError."""
    size = max(lut_map) + 1
    # One lookup pass; entry 255 marks values the map does not know (all of them >= size are
    # first clipped onto the last, unknown, entry).
    lut = np.full(size + 1, 255, dtype=np.uint8)
    for k, v in lut_map.items():
        lut[k] = v
    top = int(arr.max()) if arr.size else 0
    out = lut[np.minimum(arr, size) if top >= size else arr]
    unknown = out == 255
    if unknown.any():
        unexpected = np.unique(arr[unknown])
        raise ValueError(
            f"{_where(source)}unexpected label values {_describe(unexpected)} for "
            f"{what}; allowed values are {sorted(lut_map)}"
        )
    return out


def to_internal(
    label_map: np.ndarray,
    convention: str | LabelConvention,
    *,
    source: str | Path | None = None,
) -> np.ndarray:
    """Convert a label map from a layout's file values to internal labels.

    Args:
        label_map: ``(X, Y, Z)`` (any shape) integer or integral float array.
        convention: layout name (``"brats2021"``, ``"brats2023"``, ``"msd"``, ``"nnunet"``) or
            a :class:`LabelConvention` (e.g. read from an nnU-Net dataset.json).
        source: the file the map came from, named in error messages.

    Returns:
        uint8 array of the same shape with values in {0, 1, 2, 3}.

    Raises:
        ValueError: naming ``source`` and the offending values, for values the convention does
            not define (e.g. 3 in BraTS 2021, 4 in BraTS 2023), negative, fractional or
            non-finite values.
    """
    conv = get_convention(convention)
    arr = _integer_labels(label_map, source)
    return _apply_lut(arr, dict(conv.mapping), f"the {conv.name} convention", source)


def from_internal(internal_map: np.ndarray, convention: str | LabelConvention) -> np.ndarray:
    """Convert internal labels {0..3} to a layout's own file values (e.g. ET -> 4 for BraTS 2021).

    Returns:
        uint8 array of the same shape.

    Raises:
        ValueError: if ``internal_map`` holds values outside {0, 1, 2, 3}.
    """
    conv = get_convention(convention)
    arr = _integer_labels(internal_map, None)
    return _apply_lut(arr, conv.inverse(), "internal labels", None)


def labels_to_regions(internal_map: np.ndarray) -> np.ndarray:
    """Nested region masks from internal labels.

    Args:
        internal_map: ``(X, Y, Z)`` internal labels in {0, 1, 2, 3}.

    Returns:
        bool array ``(3, X, Y, Z)`` in :data:`REGIONS` order: WT = {1,2,3}, TC = {1,3}, ET = {3}.
    """
    arr = _integer_labels(internal_map, None)
    if arr.size and arr.max() >= N_CLASSES:
        bad = np.unique(arr[arr >= N_CLASSES])
        raise ValueError(f"internal label map: unexpected values {_describe(bad)}; allowed 0-3")
    et = arr == 3
    tc = et | (arr == 1)
    wt = tc | (arr == 2)
    return np.stack([wt, tc, et])


def regions_to_labels(regions: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Internal labels from region masks ``(3, X, Y, Z)`` in :data:`REGIONS` order.

    Rule (the same as nnU-Net's ``regions_class_order`` for BraTS): ET -> 3, else TC -> 1,
    else WT -> 2, else 0. Non-nested inputs are resolved by the hierarchy: a voxel in ET is
    enhancing even if the TC or WT channel misses it, and a TC voxel outside WT is still core.
    So ``labels_to_regions(regions_to_labels(r))`` is the nested closure of ``r``.

    Args:
        regions: bool masks, or probabilities/logit-free scores thresholded at ``threshold``
            (a voxel is in a region when its value is ``> threshold``).
    """
    reg = np.asarray(regions)
    if reg.ndim < 1 or reg.shape[0] != len(REGIONS):
        raise ValueError(f"regions: expected shape (3, ...) in {REGIONS} order, got {reg.shape}")
    masks = reg if reg.dtype == np.bool_ else reg > threshold
    labels = np.zeros(reg.shape[1:], dtype=np.uint8)
    labels[masks[0]] = 2
    labels[masks[1]] = 1
    labels[masks[2]] = 3
    return labels
