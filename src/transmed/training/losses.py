"""The training loss for region-based outputs: soft Dice (sigmoid) + binary cross-entropy.

TransMed predicts three *nested* region channels (WT ⊇ TC ⊇ ET), each with its own sigmoid, as
nnU-Net's region-based BraTS training does. An enhancing voxel's target is therefore (1, 1, 1):
the channels must not compete. MONAI's ``DiceCELoss(sigmoid=True)`` looks right for this but,
for more than one channel, its cross-entropy term is ``torch.nn.CrossEntropyLoss`` (a softmax
*across* the channels), so an ET voxel's three channels do compete. This module computes, per
channel and independently:

    loss = dice_weight · (1 − soft Dice(σ(logits), target))  +  ce_weight · BCEWithLogits

- soft Dice: ``1 − (2 Σ p t + s) / (Σ p + Σ t + s)`` with ``s = smooth`` (1e-5), the sums taken
  over the batch and the voxels of each channel ("batch Dice", nnU-Net's default for 3D U-Nets:
  an empty ET channel in one patch does not dominate), averaged over the channels;
- BCE: the mean over every element (batch, channel, voxel) of
  ``binary_cross_entropy_with_logits``.

Deep supervision: a list of logits (finest first) is scored against the target resized by
nearest neighbour to each level, with weights 1, 1/2, 1/4, ... normalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RegionDiceBCELoss", "build_loss", "soft_dice_loss"]


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5
) -> torch.Tensor:
    """Batch soft Dice loss of sigmoid probabilities, averaged over channels.

    Args:
        logits: (B, C, *spatial) raw network outputs.
        target: (B, C, *spatial) in {0, 1} (or soft labels in [0, 1]).
    Returns:
        A scalar: ``mean_c (1 − (2 Σ p t + s) / (Σ p + Σ t + s))``, sums over B and voxels.
    """
    p = torch.sigmoid(logits)
    dims = [0, *range(2, logits.ndim)]
    inter = (p * target).sum(dims)  # (C,)
    denom = p.sum(dims) + target.sum(dims)  # (C,)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


class RegionDiceBCELoss(nn.Module):
    """``dice_weight · soft Dice + ce_weight · per-channel BCE`` (see the module docstring).

    Args:
        dice_weight, ce_weight: the two terms' weights (≥ 0, not both 0).
        smooth: Dice smoothing constant.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5):
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(
                f"loss weights must be ≥ 0 and not both 0, got dice {dice_weight}, ce {ce_weight}"
            )
        self.dice_weight, self.ce_weight, self.smooth = dice_weight, ce_weight, smooth

    def _single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape"
            )
        logits, target = logits.float(), target.float()
        loss = logits.new_zeros(())
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.smooth)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.binary_cross_entropy_with_logits(logits, target)
        return loss

    def forward(
        self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        """``logits``: (B, C, D, H, W) or a deep-supervision list (finest first);
        ``target``: (B, C, D, H, W) region masks. Returns a scalar."""
        if isinstance(logits, torch.Tensor):
            return self._single(logits, target)
        if not logits:
            raise ValueError("empty list of logits")
        weights = [0.5**i for i in range(len(logits))]
        total = sum(weights)
        loss = logits[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, logits, strict=True):
            t = target
            if out.shape[2:] != target.shape[2:]:
                t = F.interpolate(target.float(), size=out.shape[2:], mode="nearest-exact")
            loss = loss + (w / total) * self._single(out, t)
        return loss


def build_loss(config: object) -> nn.Module:
    """The loss a :class:`~transmed.training.config.TrainConfig` asks for."""
    return RegionDiceBCELoss(
        dice_weight=float(config.dice_weight),  # type: ignore[attr-defined]
        ce_weight=float(config.ce_weight),  # type: ignore[attr-defined]
    )
