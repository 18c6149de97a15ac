"""The region loss: pinned against a hand computation, and nested channels do not compete."""

from __future__ import annotations

import math

import pytest
import torch

from transmed.training.config import TrainConfig
from transmed.training.losses import RegionDiceBCELoss, build_loss


def _hand(logits: torch.Tensor, target: torch.Tensor, wd: float, wc: float) -> float:
    """Dice over batch + voxels per channel, BCE per element, both written out in loops."""
    b, c = logits.shape[:2]
    lg, tg = logits.reshape(b, c, -1).tolist(), target.reshape(b, c, -1).tolist()
    dice_terms, bce_sum, n = [], 0.0, 0
    for ch in range(c):
        inter = psum = tsum = 0.0
        for i in range(b):
            for z, t in zip(lg[i][ch], tg[i][ch], strict=True):
                p = 1.0 / (1.0 + math.exp(-z))
                inter += p * t
                psum += p
                tsum += t
                bce_sum += -(t * math.log(p) + (1 - t) * math.log(1 - p))
                n += 1
        dice_terms.append(1.0 - (2 * inter + 1e-5) / (psum + tsum + 1e-5))
    return wd * sum(dice_terms) / c + wc * bce_sum / n


@pytest.mark.parametrize(("wd", "wc"), [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.7, 2.0)])
def test_loss_matches_hand_computation(wd: float, wc: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, 5, generator=g, dtype=torch.float64) * 2
    target = (torch.rand(2, 3, 3, 4, 5, generator=g) > 0.6).double()
    loss = RegionDiceBCELoss(wd, wc)(logits, target)
    assert float(loss) == pytest.approx(_hand(logits, target, wd, wc), rel=1e-6)


def test_build_loss_uses_config_weights() -> None:
    cfg = TrainConfig(dice_weight=0.25, ce_weight=3.0)
    loss = build_loss(cfg)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, 4, generator=g, dtype=torch.float64)
    target = (torch.rand(1, 3, 4, 4, 4, generator=g) > 0.5).double()
    assert float(loss(logits, target)) == pytest.approx(_hand(logits, target, 0.25, 3.0), 1e-6)


def test_enhancing_voxel_prefers_all_three_channels_on() -> None:
    """An ET voxel's target is (WT, TC, ET) = (1, 1, 1): predicting all three must cost less
    than (1, 0, 0). A softmax cross-entropy across channels (MONAI's DiceCELoss) fails this
    for its CE term, because there the channels compete."""
    target = torch.ones(1, 3, 1, 1, 1)
    all_on = torch.full((1, 3, 1, 1, 1), 6.0)
    wt_only = torch.tensor([6.0, -6.0, -6.0]).view(1, 3, 1, 1, 1)
    for wd, wc in [(1.0, 1.0), (0.0, 1.0)]:
        loss = RegionDiceBCELoss(wd, wc)
        assert loss(all_on, target) < loss(wt_only, target) - 1.0
    # the BCE term alone is near 0 for the right answer (a softmax CE would stay >= log 3 / 3)
    assert float(RegionDiceBCELoss(0.0, 1.0)(all_on, target)) < 0.01


def test_deep_supervision_list_weights_levels() -> None:
    g = torch.Generator().manual_seed(2)
    target = (torch.rand(1, 3, 8, 8, 8, generator=g) > 0.5).float()
    full = torch.randn(1, 3, 8, 8, 8, generator=g)
    half = torch.randn(1, 3, 4, 4, 4, generator=g)
    loss = RegionDiceBCELoss()
    t_half = torch.nn.functional.interpolate(target, size=(4, 4, 4), mode="nearest-exact")
    expected = (1.0 * loss(full, target) + 0.5 * loss(half, t_half)) / 1.5
    assert float(loss([full, half], target)) == pytest.approx(float(expected), rel=1e-6)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        RegionDiceBCELoss()(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="not both 0"):
        RegionDiceBCELoss(0.0, 0.0)
