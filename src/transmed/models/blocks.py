"""Blocks shared by the TransMed backbone: norm factory, residual conv block, checkpoint wrapper."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from transmed.models.layers.dynamic_conv import DynamicConv3d

NORMS = ("instance", "group")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Batch-size-independent normalisation (3D training runs at batch size 1–2)."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; accepted: {list(NORMS)}")


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    dynamic: bool = False,
    num_kernels: int = 4,
) -> nn.Module:
    """A bias-free "same" convolution (a norm follows), static or dynamic."""
    if dynamic:
        return DynamicConv3d(
            in_channels, out_channels, kernel_size, stride, bias=False, num_kernels=num_kernels
        )
    return nn.Conv3d(
        in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
    )


class ResidualBlock(nn.Module):
    """conv-norm-act-conv-norm + shortcut, then act (He et al. 2016; nnU-Net's ResEnc block).

    The two 3×3×3 convolutions are dynamic when ``dynamic`` (the TransMed-D switch); the 1×1×1
    projection shortcut (on a change of width or stride) stays static.
    Shape: (B, Cin, D, H, W) → (B, Cout, D/stride, H/stride, W/stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm: str = "instance",
        dynamic: bool = False,
        num_kernels: int = 4,
    ) -> None:
        super().__init__()
        self.conv1 = make_conv(in_channels, out_channels, 3, stride, dynamic, num_kernels)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = make_conv(out_channels, out_channels, 3, 1, dynamic, num_kernels)
        self.norm2 = make_norm(norm, out_channels)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride, bias=False),
                make_norm(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)  # (B, Cout, D', H', W')
        y = self.act(self.norm1(self.conv1(x)))  # (B, Cout, D', H', W')
        y = self.norm2(self.conv2(y))  # (B, Cout, D', H', W')
        return self.act(y + residual)


class Checkpointed(nn.Module):
    """Runs ``inner`` under activation checkpointing when ``enabled()`` is true and grads flow.

    ``enabled`` is a callable so a whole network shares one switch
    (``SegmentationModel.set_grad_checkpointing``).
    """

    def __init__(self, inner: nn.Module, enabled: Callable[[], bool]) -> None:
        super().__init__()
        self.inner = inner
        self._enabled = enabled

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if self._enabled() and torch.is_grad_enabled() and self.training:
            return checkpoint(self.inner, *args, use_reentrant=False)
        return self.inner(*args)


def wrap_checkpointing(
    root: nn.Module, targets: list[nn.Module], enabled: Callable[[], bool]
) -> None:
    """Replace every reference to each target module inside ``root`` by a ``Checkpointed``.

    Some MONAI networks hold the same block under two parents (DynUNet's skip layers), so
    every parent attribute pointing at a target is replaced, not just the first.
    """
    wrappers = {id(t): Checkpointed(t, enabled) for t in targets}
    for parent in list(root.modules()):
        if isinstance(parent, Checkpointed):
            continue
        for name, child in list(parent.named_children()):
            if id(child) in wrappers:
                setattr(parent, name, wrappers[id(child)])
