"""Post-processing of predicted label maps: small connected components and region nesting.

Pure functions on internal labels (0 background, 1 NCR, 2 ED, 3 ET; see
:mod:`transmed.data.labels`). Nesting (ET ⊆ TC ⊆ WT) already holds for every label map, because
labels are built from region masks by :func:`~transmed.data.labels.regions_to_labels` (the
nnU-Net BraTS rule: a voxel in an inner region belongs to the outer ones); this module removes
what nesting cannot: isolated specks, hierarchically, so the result stays nested:

1. WT components smaller than ``min_component_mm3`` → background;
2. TC components smaller than it → oedema (they stay tumour, but not core);
3. ET components smaller than it → necrosis / non-enhancing core;
4. optionally, when the whole ET volume is below ``et_min_mm3``, ET → necrosis (the BraTS
   post-processing of Isensee et al. 2021, which trades a false-positive ET in cases without
   enhancement, scored 0 Dice by BraTS, for a missed tiny ET);
5. optionally (``drop_coreless_wt``), WT components with no tumour core within
   ``core_margin_mm`` → background, *when the map has a tumour core somewhere*. A glioma is a
   core with oedema around it; a separate patch of "oedema" far from any core is, in this
   model's failures, bright cortex, CSF or sinus (see the model card). A map with no core at
   all is left alone: there the model may have missed the core of a small or low-grade tumour,
   and dropping everything would erase it.

scipy's ``ndimage.label`` does the connected components (26-connectivity, as in 3D lesion
analysis; BraTS' lesion-wise evaluation uses it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


@dataclass(frozen=True)
class PostprocessConfig:
    """How to clean a predicted label map.

    Attributes:
        min_component_mm3: connected components of WT, TC or ET smaller than this (mm³) are
            demoted one level (WT → background, TC → oedema, ET → necrosis). 0 disables.
        et_min_mm3: if the total ET volume is below this (mm³), all ET becomes necrosis.
            0 disables (the default: it is a challenge-scoring trick, not a clinical default).
        drop_coreless_wt: remove WT components with no tumour core within ``core_margin_mm``
            (only in a map that has a core somewhere; see the module). Off by default.
        core_margin_mm: how far (mm, Euclidean on the grid's spacing) a WT component may lie
            from the nearest core voxel and still count as that core's oedema. 0: it must
            contain core.
        et_min_mean_prob: ET components whose mean ET probability is below this become
            necrosis (needs the probabilities: ``postprocess_labels(et_probability=...)``).
            0 disables (the default). The network's peak ET probability is near 1 in false and
            true ET alike; its mean over a false component is often lower
            (``benchmarks/et_component_confidence.py``).
    """

    min_component_mm3: float = 20.0
    et_min_mm3: float = 0.0
    drop_coreless_wt: bool = False
    core_margin_mm: float = 0.0
    et_min_mean_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.et_min_mean_prob) < 1.0:
            raise ValueError(f"et_min_mean_prob must be in [0, 1), got {self.et_min_mean_prob!r}")
        for name in ("min_component_mm3", "et_min_mm3", "core_margin_mm", "et_min_mean_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not np.isfinite(value) or value < 0:  # fmt: skip
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.drop_coreless_wt, (bool, np.bool_)):
            raise ValueError(
                f"drop_coreless_wt must be true or false, got {self.drop_coreless_wt!r}")

    @property
    def enabled(self) -> bool:
        return (self.min_component_mm3 > 0 or self.et_min_mm3 > 0
                or bool(self.drop_coreless_wt) or self.et_min_mean_prob > 0)  # fmt: skip


def small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """Boolean mask of the 26-connected components of ``mask`` with fewer than ``min_voxels``."""
    out = np.zeros(mask.shape, dtype=bool)
    if min_voxels <= 0 or not mask.any():
        return out
    box = tuple(  # label only the mask's bounding box: tumours fill a small part of a head
        slice(int(np.flatnonzero(mask.any(axis=tuple(o for o in range(3) if o != a)))[0]),
              int(np.flatnonzero(mask.any(axis=tuple(o for o in range(3) if o != a)))[-1]) + 1)
        for a in range(3)
    )  # fmt: skip
    components, n = ndimage.label(mask[box], structure=_STRUCTURE)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    small = sizes < min_voxels
    small[0] = False  # background
    out[box] = small[components]
    return out


def coreless_components(labels: np.ndarray, spacing_mm: Sequence[float],
                        margin_mm: float = 0.0) -> np.ndarray:
    """Boolean mask of the 26-connected WT components of internal ``labels`` with no tumour
    core (NCR or ET) within ``margin_mm``; empty when the map has no core at all."""
    wt, core = labels > 0, (labels == 1) | (labels == 3)
    out = np.zeros(labels.shape, dtype=bool)
    if not core.any():
        return out
    components, n = ndimage.label(wt, structure=_STRUCTURE)
    if margin_mm > 0:  # distance from each voxel to the nearest core voxel, in mm
        near = ndimage.distance_transform_edt(~core, sampling=tuple(float(s) for s in spacing_mm))
        near = near <= margin_mm
    else:
        near = core
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(components[near & wt])] = True
    keep[0] = True  # background
    out[:] = ~keep[components]
    return out


def unsure_et_components(labels: np.ndarray, et_probability: np.ndarray,
                         min_mean: float) -> np.ndarray:  # fmt: skip
    """Boolean mask of the 26-connected ET components of internal ``labels`` whose mean
    ``et_probability`` (same grid) is below ``min_mean``."""
    et = labels == 3
    if min_mean <= 0 or not et.any():
        return np.zeros(labels.shape, dtype=bool)
    components, n = ndimage.label(et, structure=_STRUCTURE)
    sums = np.bincount(components.ravel(), weights=et_probability.ravel(), minlength=n + 1)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    unsure = sums / np.maximum(sizes, 1) < min_mean
    unsure[0] = False  # background
    return unsure[components]


def postprocess_labels(
    labels: np.ndarray, spacing_mm: Sequence[float], config: PostprocessConfig | None = None,
    et_probability: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Clean internal labels ``(X, Y, Z)`` on a grid of voxel size ``spacing_mm``; see module.

    ``et_probability`` (``(X, Y, Z)``, the ET channel's probabilities on the same grid) is
    needed only by ``config.et_min_mean_prob``. Returns a new array; the input is not
    modified. The result is nested by construction.
    """
    config = config or PostprocessConfig()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels: expected a 3D (X, Y, Z) map, got shape {labels.shape}")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm: expected three positive sizes, got {spacing_mm!r}")
    out = labels.astype(np.uint8, copy=True)
    if not config.enabled:
        return out
    voxel_mm3 = float(np.prod(spacing))
    min_voxels = config.min_component_mm3 / voxel_mm3
    # outer to inner, so a demoted outer component takes its inner labels with it
    out[small_components(out > 0, min_voxels)] = 0  # WT specks → background
    out[small_components((out == 1) | (out == 3), min_voxels)] = 2  # TC specks → oedema
    out[small_components(out == 3, min_voxels)] = 1  # ET specks → necrosis
    if config.et_min_mean_prob > 0:
        if et_probability is None or np.shape(et_probability) != labels.shape:
            got = None if et_probability is None else np.shape(et_probability)
            raise ValueError("et_min_mean_prob needs the ET probabilities on the labels' grid "
                             f"({labels.shape}), got {got}")  # fmt: skip
        out[unsure_et_components(out, np.asarray(et_probability), config.et_min_mean_prob)] = 1
    if config.et_min_mm3 > 0 and 0 < np.count_nonzero(out == 3) * voxel_mm3 < config.et_min_mm3:
        out[out == 3] = 1
    if config.drop_coreless_wt:  # last: a core demoted to oedema above is no core any more
        out[coreless_components(out, spacing, config.core_margin_mm)] = 0
    return out
