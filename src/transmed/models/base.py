"""The interface every registered segmentation model implements.

Subclasses implement :meth:`SegmentationModel.forward_padded`; the base class checks the input,
pads the spatial size up to what the architecture needs and crops the logits back, so that
every model takes any (B, C, D, H, W) input within its limits and returns logits of the same
spatial size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationModel(nn.Module):
    """Base class: input checks, internal padding, gradient-checkpointing switch.

    Attributes:
        in_channels: channels the model expects (4 MR modalities by default).
        out_channels: logits produced (3 region channels WT/TC/ET by default).
        size_divisor: spatial sizes are padded up to a multiple of this (voxels), and to at
            least twice it, so the coarsest stage keeps 2 voxels per axis (instance norm needs
            more than one).
        fixed_size: for architectures with position embeddings of fixed length (UNETR), the
            largest (D, H, W) accepted; smaller inputs are padded up to it. ``None`` otherwise.
        config: registry name and constructor arguments, set by ``create_model``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size_divisor: int = 1,
        fixed_size: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_divisor = size_divisor
        self.fixed_size = fixed_size
        self.grad_checkpointing = False
        self.config: dict = {}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute stage activations in backward instead of storing them (saves memory)."""
        self.grad_checkpointing = bool(enable)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` for inputs the model cannot take, before any computation."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 5:
            raise ValueError(
                f"expected a 5D input (B, C, D, H, W), got {x.ndim}D shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        if min(x.shape[2:]) < 1 or x.shape[0] < 1:
            raise ValueError(f"empty input shape {tuple(x.shape)}")
        if self.fixed_size is not None and any(
            s > f for s, f in zip(x.shape[2:], self.fixed_size, strict=False)
        ):
            raise ValueError(
                f"{type(self).__name__} takes spatial sizes up to {self.fixed_size} (fixed "
                f"position embeddings), got {tuple(x.shape[2:])}; use sliding-window inference"
            )

    def padded_size(self, spatial: tuple[int, ...]) -> tuple[int, int, int]:
        """Spatial size the input is padded to before ``forward_padded``."""
        if self.fixed_size is not None:
            return tuple(self.fixed_size)  # type: ignore[return-value]
        d = self.size_divisor
        return tuple(max(int(math.ceil(s / d) * d), 2 * d) for s in spatial)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, out_channels, D, H, W) for input (B, in_channels, D, H, W).

        With deep supervision in training mode, a list of logits from fine to coarse, the first
        at full size and each further one at half the previous size (rounded up).
        """
        self.check_input(x)
        spatial = tuple(x.shape[2:])
        target = self.padded_size(spatial)
        # F.pad takes (W_lo, W_hi, H_lo, H_hi, D_lo, D_hi): pad at the end of each axis.
        pad = [p for s, t in zip(spatial[::-1], target[::-1], strict=True) for p in (0, t - s)]
        if any(pad):
            x = F.pad(x, pad)  # zero = background after z-scoring
        out = self.forward_padded(x)
        if isinstance(out, (list, tuple)):
            return [_crop(o, spatial, target) for o in out]
        return _crop(out, spatial, target)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        raise NotImplementedError


def _crop(y: torch.Tensor, spatial: tuple[int, ...], padded: tuple[int, ...]) -> torch.Tensor:
    # Outputs at a coarser scale (deep supervision) are cropped proportionally, rounding up.
    scale = [p // o for p, o in zip(padded, y.shape[2:], strict=False)]
    size = [math.ceil(s / max(f, 1)) for s, f in zip(spatial, scale, strict=False)]
    if list(y.shape[2:]) == size:
        return y
    return y[:, :, : size[0], : size[1], : size[2]]
