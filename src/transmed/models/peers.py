"""MONAI networks registered behind TransMed's interface, for side-by-side comparison.

Each peer is wrapped in :class:`MonaiPeer`, which gives it the same input checks, internal
padding to the architecture's size divisor, and ``set_grad_checkpointing`` switch (stage-wise
activation checkpointing of the MONAI blocks) as the TransMed family. The networks themselves
are MONAI's, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks import nets
from torch import nn

from transmed.models.base import SegmentationModel
from transmed.models.blocks import wrap_checkpointing
from transmed.models.registry import register_model


class MonaiPeer(SegmentationModel):
    """A MONAI network behind the common interface.

    Args:
        net: the MONAI network.
        checkpoint_targets: function returning the stage modules to checkpoint.
        size_divisor: spatial sizes are padded to a multiple of this.
        fixed_size: largest input accepted (padded up to it), for fixed position embeddings.
    """

    def __init__(
        self,
        net: nn.Module,
        in_channels: int,
        out_channels: int,
        checkpoint_targets: Callable[[nn.Module], list[nn.Module]],
        size_divisor: int = 1,
        fixed_size: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, size_divisor, fixed_size)
        self.net = net
        wrap_checkpointing(net, checkpoint_targets(net), lambda: self.grad_checkpointing)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, Cout, D, H, W)


@register_model
def segresnet(
    in_channels: int = 4,
    out_channels: int = 3,
    init_filters: int = 16,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    norm: str = "instance",
) -> MonaiPeer:
    """MONAI SegResNet (Myronenko 2018, BraTS 2018 winner), decoder-only (no VAE branch)."""
    if init_filters < 1 or len(blocks_up) != len(blocks_down) - 1:
        raise ValueError("init_filters must be ≥ 1 and blocks_up one shorter than blocks_down")
    net = nets.SegResNet(
        spatial_dims=3,
        init_filters=init_filters,
        in_channels=in_channels,
        out_channels=out_channels,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
        norm=norm,
    )
    return MonaiPeer(
        net, in_channels, out_channels,
        lambda n: [*n.down_layers, *n.up_layers],
        size_divisor=2 ** (len(blocks_down) - 1),
    )  # fmt: skip


@register_model
def dynunet(
    in_channels: int = 4,
    out_channels: int = 3,
    filters: Sequence[int] = (32, 64, 128, 256, 320, 320),
    norm: str = "instance",
) -> MonaiPeer:
    """MONAI DynUNet configured as nnU-Net's 3d_fullres plan for BraTS (6 stages, 3³ kernels)."""
    levels = len(filters)
    if levels < 2 or any(f < 1 for f in filters):
        raise ValueError(f"filters needs ≥ 2 positive widths, got {tuple(filters)}")
    strides = [1] + [2] * (levels - 1)
    net = nets.DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[3] * levels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(filters),
        norm_name=norm,
        res_block=False,
    )
    return MonaiPeer(
        net, in_channels, out_channels,
        lambda n: [n.input_block, *n.downsamples, n.bottleneck, *n.upsamples],
        size_divisor=2 ** (levels - 1),
    )  # fmt: skip


@register_model
def swinunetr(
    in_channels: int = 4,
    out_channels: int = 3,
    feature_size: int = 48,
    use_v2: bool = False,
) -> MonaiPeer:
    """MONAI Swin UNETR (Hatamizadeh et al. 2022; BraTS 2021 configuration: feature_size 48)."""
    if feature_size < 12 or feature_size % 12:
        raise ValueError(f"feature_size must be a positive multiple of 12, got {feature_size}")
    net = nets.SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        use_v2=use_v2,
    )

    def targets(n: nn.Module) -> list[nn.Module]:
        vit = n.swinViT
        stages = [*vit.layers1, *vit.layers2, *vit.layers3, *vit.layers4]
        enc = [n.encoder1, n.encoder2, n.encoder3, n.encoder4, n.encoder10]
        dec = [n.decoder5, n.decoder4, n.decoder3, n.decoder2, n.decoder1]
        return stages + enc + dec

    return MonaiPeer(net, in_channels, out_channels, targets, size_divisor=32)


@register_model
def unetr(
    in_channels: int = 4,
    out_channels: int = 3,
    img_size: int = 128,
    feature_size: int = 16,
    hidden_size: int = 768,
    num_heads: int = 12,
) -> MonaiPeer:
    """MONAI UNETR (Hatamizadeh et al. 2022). Fixed size: inputs up to ``img_size``³ voxels,
    padded up to it (its ViT has a learned position embedding per 16³ patch)."""
    if img_size < 16 or img_size % 16:
        raise ValueError(f"img_size must be a positive multiple of 16, got {img_size}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    net = nets.UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=img_size,
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=4 * hidden_size,
        num_heads=num_heads,
    )

    def targets(n: nn.Module) -> list[nn.Module]:
        enc = [n.encoder1, n.encoder2, n.encoder3, n.encoder4]
        dec = [n.decoder5, n.decoder4, n.decoder3, n.decoder2]
        return [*n.vit.blocks, *enc, *dec]

    size = (img_size,) * 3
    return MonaiPeer(net, in_channels, out_channels, targets, 16, fixed_size=size)  # type: ignore[arg-type]
