"""The generator as a torch ``Dataset``: sample ``i`` of epoch ``e`` is a pure function of
``(seed, e, i)`` (the label map it uses, and every draw), so a resumed run, any number of
loader workers and any rank under DDP see exactly the samples of an uninterrupted run."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from transmed.data.generator.labelmaps import LabelMapPool
from transmed.data.generator.sample import GeneratorConfig, draw_sample, fine_to_regions


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index, 0x5E4]))


class GeneratorDataset(Dataset):
    """``length`` generated patches per epoch: ``{"image": (4, *patch), "target": (3, *patch)}``
    (float32; targets are the WT, TC, ET region masks). Call :meth:`set_epoch` each epoch."""

    def __init__(self, pool: LabelMapPool, config: GeneratorConfig, length: int, seed: int = 0):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.pool, self.config, self.length, self.seed = pool, config, int(length), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, self.epoch, index)
        lm = self.pool.get(int(rng.integers(len(self.pool))))
        image, fine, _ = draw_sample(lm, rng, self.config)
        return {
            "image": torch.from_numpy(image),  # (4, *patch)
            "target": torch.from_numpy(fine_to_regions(fine)),  # (3, *patch)
        }
