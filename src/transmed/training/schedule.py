"""Learning-rate schedules: linear warm-up then poly (nnU-Net) or cosine decay, per iteration."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("poly", "cosine")


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str = "poly") -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; accepted: {list(SCHEDULES)}")
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError("total_steps must be ≥ 1 and warmup_steps ≥ 0")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "poly":
        return (1.0 - progress) ** 0.9
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: Optimizer, total_steps: int, warmup_steps: int, kind: str = "poly"
) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimisation step."""
    lr_factor(0, total_steps, warmup_steps, kind)  # validate now, not at the first step
    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, kind))
