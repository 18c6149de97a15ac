"""Training data: patches from preprocessed cases, foreground oversampling, augmentation.

Every random draw of sample ``i`` in epoch ``e`` comes from a generator seeded by
``(seed, epoch, i)``: which case, where the patch is, and the augmentation. Samples therefore do
not depend on the number of loader workers, on the order workers run in, or on the rank under
DistributedDataParallel, and a run resumed at an epoch boundary draws exactly the samples the
uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from transmed.data.labels import labels_to_regions
from transmed.transforms.augment import AugmentConfig, build_augmentation
from transmed.transforms.store import load_arrays


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def choose_patch_origin(
    shape: tuple[int, ...],
    patch: tuple[int, int, int],
    label: np.ndarray | None,
    foreground: bool,
    rng: np.random.Generator,
) -> tuple[int, int, int]:
    """Corner of a patch inside a volume (already padded to at least the patch size).

    With ``foreground`` and a label holding tumour, the patch is centred on a random tumour
    voxel (clipped to stay inside); otherwise its corner is uniform.
    """
    if foreground and label is not None:
        fg = np.flatnonzero(label)
        if fg.size:
            centre = np.unravel_index(fg[rng.integers(fg.size)], label.shape)
            return tuple(  # type: ignore[return-value]
                int(np.clip(c - p // 2, 0, s - p))
                for c, p, s in zip(centre, patch, shape, strict=True)
            )
    return tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=False))  # type: ignore[return-value]


def pad_to(array: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Zero-pad the last three axes symmetrically up to at least ``size``."""
    pads = [(0, 0)] * (array.ndim - 3)
    for s, p in zip(array.shape[-3:], size, strict=False):
        extra = max(0, p - s)
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(array, pads) if any(sum(p) for p in pads) else array


class PatchDataset(Dataset):
    """``length`` random patches per epoch from preprocessed ``.npz`` cases.

    Returns dicts with ``image`` (4, *patch) float32 and ``target`` (3, *patch) float32 region
    masks (WT, TC, ET). Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        paths: list[Path],
        patch_size: tuple[int, int, int],
        length: int,
        foreground_prob: float = 0.33,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache_cases: int = 64,
    ) -> None:
        if not paths:
            raise ValueError("PatchDataset needs at least one case")
        self.paths = list(paths)
        self.patch_size = tuple(patch_size)
        self.length = length
        self.foreground_prob = foreground_prob
        self.augment_config = augment
        self.seed = seed
        self.epoch = 0
        self._cache: OrderedDict[Path, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._cache_cases = cache_cases
        self._pipeline = build_augmentation(augment, keys=("image", "label")) if augment else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _load(self, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        arrays = load_arrays(path)
        if arrays[1] is None:
            raise ValueError(f"{path}: training case has no label")
        self._cache[path] = arrays
        if len(self._cache) > self._cache_cases:
            self._cache.popitem(last=False)
        return arrays

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, self.epoch, index)
        image, label = self._load(self.paths[int(rng.integers(len(self.paths)))])
        image, label = pad_to(image, self.patch_size), pad_to(label, self.patch_size)
        fg = rng.random() < self.foreground_prob
        o = choose_patch_origin(label.shape, self.patch_size, label, fg, rng)
        sl = tuple(slice(a, a + p) for a, p in zip(o, self.patch_size, strict=False))
        img = np.ascontiguousarray(image[(slice(None), *sl)])  # (4, *patch)
        lab = np.ascontiguousarray(label[sl])  # (*patch)
        if self._pipeline is not None:
            self._pipeline.set_random_state(seed=int(rng.integers(2**31)))
            out = self._pipeline({"image": img, "label": lab[None]})
            img = np.asarray(out["image"], dtype=np.float32)
            lab = np.asarray(out["label"], dtype=np.uint8)[0]
        target = labels_to_regions(lab).astype(np.float32)  # (3, *patch)
        return {"image": torch.from_numpy(img), "target": torch.from_numpy(target)}
