"""Foreground (brain or head) masks and the crop box around them.

Two kinds of input reach the pipeline:

* skull-stripped data (BraTS and every dataset derived from it): the background is exactly 0,
  so the foreground is the union of nonzero voxels over the modalities (holes filled, as in
  nnU-Net's ``create_nonzero_mask``);
* clinical data in native scanner space (skull present, background noise, no zeros): a head
  mask from an Otsu threshold per modality, united over the modalities, reduced to its largest
  connected component, with holes filled in 3D and slice by slice (thick-slice acquisitions
  leave holes open towards the first or last slice).

``"auto"`` picks ``"nonzero"`` when at least ``SKULL_STRIPPED_BORDER_ZEROS`` of the reference
image's border voxels (its six faces) are exactly 0, else ``"otsu"``. The border, not the whole
volume, is used because a tightly cropped skull-stripped volume has few zeros overall but a zero
rim, while native-space images have noise at the border (TCGA-FG-6692: 7-17 % zeros there,
BraTS: 100 %).

No skull stripping is done here: for clinical data this mask is the head. Brain extraction
(:mod:`transmed.transforms.brain_extraction`) replaces it when preprocessing asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Fraction of exact zeros on the border above which an image counts as skull-stripped.
SKULL_STRIPPED_BORDER_ZEROS = 0.5

FOREGROUND_METHODS = ("auto", "nonzero", "otsu")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of intensities (maximises the between-class variance).

    Written here (about ten lines) because scikit-image, which has ``threshold_otsu``, is not a
    dependency of TransMed.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_lo = np.cumsum(hist)
    weight_hi = weight_lo[-1] - weight_lo
    sum_lo = np.cumsum(hist * centres)
    mean_lo = sum_lo / np.maximum(weight_lo, 1)
    mean_hi = (sum_lo[-1] - sum_lo) / np.maximum(weight_hi, 1)
    between = weight_lo * weight_hi * (mean_lo - mean_hi) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes in 3D, then in every slice along each axis (holes open towards the borders)."""
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        moved = np.moveaxis(mask, axis, 0)
        filled = np.stack([ndimage.binary_fill_holes(s) for s in moved])
        mask = np.moveaxis(filled, 0, axis)
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a boolean mask (empty stays empty)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def nonzero_mask(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Union of nonzero voxels over channels of ``(C, X, Y, Z)`` images (or a sequence of
    ``(X, Y, Z)`` channels), 3D holes filled.

    Holes are filled inside the mask's bounding box (plus one voxel, so the outside stays
    connected): the same result as filling the whole volume, ~2.5× faster on BraTS volumes.
    """
    mask = np.zeros(np.shape(images[0]), dtype=bool)
    for channel in images:  # channel by channel: no (C, X, Y, Z) temporary
        mask |= channel != 0
    if not mask.any():
        return mask
    box = tuple(slice(max(a - 1, 0), b + 1) for a, b in bounding_box(mask))
    mask[box] = ndimage.binary_fill_holes(mask[box])
    return mask


def head_mask(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Head mask of ``(C, X, Y, Z)`` images (or a sequence of channels) with skull and
    background noise (see module doc)."""
    mask = np.zeros(np.shape(images[0]), dtype=bool)
    for channel in images:
        inside = channel[channel != 0]  # zeros are outside some series' field of view
        if inside.size:
            mask |= channel > otsu_threshold(inside)
    # An opening detaches thin noise bridges before the largest component is taken.
    mask = ndimage.binary_opening(mask, structure=ndimage.generate_binary_structure(3, 1))
    return _fill_holes(largest_component(mask))


def choose_method(reference: np.ndarray, method: str) -> str:
    """Resolve ``"auto"`` to ``"nonzero"`` or ``"otsu"`` from the reference's border zeros."""
    if method not in FOREGROUND_METHODS:
        raise ValueError(f"foreground must be one of {FOREGROUND_METHODS}, got {method!r}")
    if method != "auto":
        return method
    zero_fraction = border_zero_fraction(reference)
    return "nonzero" if zero_fraction >= SKULL_STRIPPED_BORDER_ZEROS else "otsu"


def border_zero_fraction(image: np.ndarray) -> float:
    """Fraction of exact zeros among the voxels of the six faces of a 3D ``image``."""
    rim = np.ones(image.shape, dtype=bool)
    rim[1:-1, 1:-1, 1:-1] = False
    return float(np.mean(image[rim] == 0))


def foreground_mask(images: np.ndarray | Sequence[np.ndarray], method: str) -> np.ndarray:
    """Boolean ``(X, Y, Z)`` foreground of ``(C, X, Y, Z)`` images: ``"nonzero"`` or ``"otsu"``."""
    if method == "nonzero":
        return nonzero_mask(images)
    if method == "otsu":
        return head_mask(images)
    raise ValueError(f"foreground method must be 'nonzero' or 'otsu', got {method!r}")


def bounding_box(
    mask: np.ndarray, margin: tuple[int, int, int] = (0, 0, 0)
) -> tuple[tuple[int, int], ...]:
    """``((start, stop),) * 3`` half-open box around ``mask`` widened by ``margin`` voxels.

    The box is clipped to the array. An empty mask gives the whole array.
    """
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        size = mask.shape[axis]
        if hits.size == 0:
            return tuple((0, int(s)) for s in mask.shape)
        start = max(0, int(hits[0]) - int(margin[axis]))
        stop = min(size, int(hits[-1]) + 1 + int(margin[axis]))
        box.append((start, stop))
    return tuple(box)
