"""The TransMed backbone and its four ablation variants.

Registered as unet, transmed_a, transmed_d and transmed_full.

One definition, ``TransMedNet``; the variants differ only in two switches, so the ablation
compares like with like:

- ``axial``: 3D axial attention blocks after the residual blocks of the coarse stages;
- ``dynamic``: dynamic convolution in place of the static 3×3×3 convolutions of every
  residual block (stem, up-sampling and 1×1×1 layers stay static).

Layout (features f = (24, 48, 96, 192), input 128³):

    full res   x ──conv3³(4→8)─────────────────────────────────────┐ (+) → 1×1×1 → logits
    1/2  64³   stem conv3³ s2 → enc0 [res] ─────────────── dec0 [res] ─ up ┘
    1/4  32³                    enc1 [res s2] ───────── dec1 [res] ─ up
    1/8  16³                    enc2 [res s2 + axial] ─ dec2 [res] ─ up
    1/16  8³                    enc3 [res s2, res, + axial]  (bottleneck)

Why this shape: on CPU the cost of a 3D U-Net is dominated by the full-resolution stage (a
3×3×3 convolution at 128³ with 16→16 channels is ≈29 GFLOP). The stride-2 stem puts the first
residual stage at half resolution; a thin full-resolution branch (one 3×3×3 conv, 8 channels)
and a learned ×2 transposed-convolution up-sampling keep full-resolution boundaries. Skips are
added (as in SegResNet), not concatenated, which halves the decoder convolutions' input width.

Axial attention sits at 1/8 and 1/16 resolution: there the receptive field of convolutions is
still local relative to the tumour while the token grid is small (16³ and 8³ for a 128³ patch,
up to 30×30×10 for a whole BraTS case), so global context costs little. At full or half
resolution the N·(D+H+W) scores would dominate the runtime for little gain.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import nn

from transmed.models.base import SegmentationModel
from transmed.models.blocks import NORMS, Checkpointed, ResidualBlock, make_norm
from transmed.models.layers.axial_attention import AXIAL_LAYOUTS, AxialAttentionBlock3d
from transmed.models.registry import register_legacy_default, register_model


class TransMedNet(SegmentationModel):
    """Residual 3D U-Net with optional axial attention and dynamic convolution.

    Args:
        in_channels: input modalities (4: T1, T1ce, T2, FLAIR).
        out_channels: output logits (3: WT, TC, ET region channels, sigmoid).
        features: widths of the stages at 1/2, 1/4, 1/8, 1/16 … resolution (≥ 2 stages).
        encoder_blocks: residual blocks per encoder stage (same length as ``features``).
        decoder_blocks: residual blocks per decoder stage (finest first; len(features) − 1).
        full_res_channels: width of the full-resolution branch.
        axial: add 3D axial attention blocks to the stages in ``axial_stages``.
        axial_stages: encoder stage indices (0 = 1/2 resolution) that get attention.
        axial_depth: attention blocks per such stage.
        attention_head_dim: channels per head (heads = width / head_dim).
        axial_layout: "residual" (a pre-norm residual sub-block per axis, with QK-norm) or
            "chained" (the v1 layout, which only the shipped v1.x weights use; see
            :mod:`transmed.models.layers.axial_attention`). Configs stored before the option
            existed rebuild as "chained" (``registry.LEGACY_DEFAULTS``).
        axial_layer_scale: None (off) or ε > 0: LayerScale on each residual branch of the
            attention blocks, a learned per-channel gain initialised to ε, so each block starts
            as the identity (residual layout only; see
            :mod:`transmed.models.layers.axial_attention`).
        patch_size: training patch edge in voxels; sets each attention stage's relative-bias
            reach to ``patch_size / stride`` (farther distances clipped at inference).
        dynamic: use dynamic convolution in the residual blocks.
        num_kernels: candidate kernels K of each dynamic convolution.
        norm: "instance" or "group" (batch-size independent).
        deep_supervision: in training mode also return logits at 1/2 and 1/4 resolution.
        channels_last: keep weights and activations in the channels-last 3D layout. On CPU
            oneDNN convolutions run on it without reorders: measured on 2 cores, inference at
            128³ 3.6 s vs 4.1 s, and the full-resolution convolution's backward 0.14 s vs 2.1 s
            (its 4-channel input is the worst case for the default layout).
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        features: Sequence[int] = (24, 48, 96, 192),
        encoder_blocks: Sequence[int] = (1, 1, 1, 2),
        decoder_blocks: Sequence[int] = (1, 1, 1),
        full_res_channels: int = 8,
        axial: bool = False,
        axial_stages: Sequence[int] = (2, 3),
        axial_depth: int = 1,
        attention_head_dim: int = 32,
        axial_layout: str = "residual",
        axial_layer_scale: float | None = None,
        patch_size: int = 128,
        dynamic: bool = False,
        num_kernels: int = 4,
        norm: str = "instance",
        deep_supervision: bool = False,
        channels_last: bool = True,
    ) -> None:
        features = tuple(int(f) for f in features)
        n = len(features)
        _check_args(
            features, encoder_blocks, decoder_blocks, full_res_channels, axial_stages,
            axial_depth, attention_head_dim, patch_size, num_kernels, norm, axial, axial_layout,
            axial_layer_scale,
        )  # fmt: skip
        super().__init__(in_channels, out_channels, size_divisor=2**n)
        self.features = features
        self.axial = axial
        self.dynamic = dynamic
        self.deep_supervision = deep_supervision
        ckpt = lambda: self.grad_checkpointing  # noqa: E731 - one switch for all stages

        # Stem and head stay outside activation checkpointing: checkpointing them too measured
        # 1.59× the step time (vs 1.31×) for no further memory saving at 128³ (bench training).
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, features[0], 3, stride=2, padding=1, bias=False),
            make_norm(norm, features[0]),
            nn.LeakyReLU(0.01, inplace=True),
        )
        encoders = []
        for i, (f, nb) in enumerate(zip(features, encoder_blocks, strict=False)):
            blocks: list[nn.Module] = []
            for b in range(nb):
                cin = features[i - 1] if (b == 0 and i > 0) else f
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(ResidualBlock(cin, f, stride, norm, dynamic, num_kernels))
            if axial and i in axial_stages:
                reach = max(2, patch_size // 2 ** (i + 1))
                heads = f // attention_head_dim
                blocks += [
                    AxialAttentionBlock3d(f, heads, reach, layout=axial_layout,
                                          layer_scale=axial_layer_scale)
                    for _ in range(axial_depth)
                ]
            encoders.append(Checkpointed(nn.Sequential(*blocks), ckpt))
        self.encoders = nn.ModuleList(encoders)

        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(features[i + 1], features[i], 2, stride=2) for i in range(n - 1)
        )
        self.decoders = nn.ModuleList(
            Checkpointed(
                nn.Sequential(
                    *(
                        ResidualBlock(features[i], features[i], 1, norm, dynamic, num_kernels)
                        for _ in range(decoder_blocks[i])
                    )
                ),
                ckpt,
            )
            for i in range(n - 1)
        )
        self.head = FullResolutionHead(in_channels, features[0], full_res_channels, out_channels)
        # Heads exist only with deep supervision, so no parameter goes without a gradient.
        self.aux_heads = nn.ModuleList(
            nn.Conv3d(features[i], out_channels, 1)
            for i in range(min(2, n - 1) if deep_supervision else 0)
        )
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        # x: (B, Cin, D, H, W), D, H, W multiples of 2**len(features)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        skips = []
        h = self.stem(x)  # (B, f0, D/2, H/2, W/2)
        for enc in self.encoders:
            h = enc(h)  # (B, f_i, D/2^(i+1), ...)
            skips.append(h)
        decoded = []
        for i in reversed(range(len(self.decoders))):
            h = self.ups[i](h) + skips[i]  # (B, f_i, D/2^(i+1), ...)
            h = self.decoders[i](h)
            decoded.append(h)
        logits = self.head(h, x)  # (B, Cout, D, H, W)
        if self.deep_supervision and self.training:
            aux = [head(decoded[-1 - i]) for i, head in enumerate(self.aux_heads)]
            return [logits, *aux]  # full, 1/2, 1/4 resolution
        return logits


class FullResolutionHead(nn.Module):
    """×2 learned up-sampling of the half-resolution features plus a thin full-resolution
    branch on the input, then 1×1×1 logits.

    Shape: h (B, f0, D/2, H/2, W/2), x (B, Cin, D, H, W) → (B, Cout, D, H, W).
    """

    def __init__(self, in_channels: int, f0: int, width: int, out_channels: int) -> None:
        super().__init__()
        self.full_res = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1), nn.LeakyReLU(0.01, inplace=True)
        )
        self.up = nn.ConvTranspose3d(f0, width, 2, stride=2)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.out = nn.Conv3d(width, out_channels, 1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.up(h) + self.full_res(x))  # (B, width, D, H, W)
        return self.out(y)  # (B, Cout, D, H, W)


def _check_args(
    features: tuple[int, ...],
    encoder_blocks: Sequence[int],
    decoder_blocks: Sequence[int],
    full_res_channels: int,
    axial_stages: Sequence[int],
    axial_depth: int,
    head_dim: int,
    patch_size: int,
    num_kernels: int,
    norm: str,
    axial: bool,
    axial_layout: str,
    axial_layer_scale: float | None = None,
) -> None:
    n = len(features)
    if n < 2 or any(f < 1 for f in features):
        raise ValueError(f"features needs ≥ 2 positive widths, got {features}")
    if len(encoder_blocks) != n or any(b < 1 for b in encoder_blocks):
        raise ValueError(
            f"encoder_blocks needs {n} entries ≥ 1 (one per stage), got {tuple(encoder_blocks)}"
        )
    if len(decoder_blocks) != n - 1 or any(b < 0 for b in decoder_blocks):
        raise ValueError(
            f"decoder_blocks needs {n - 1} entries ≥ 0, got {tuple(decoder_blocks)}"
        )
    if full_res_channels < 1 or num_kernels < 1 or patch_size < 2 ** (n + 1):
        raise ValueError(
            "full_res_channels and num_kernels must be ≥ 1 and patch_size ≥ "
            f"{2 ** (n + 1)}, got {full_res_channels}, {num_kernels}, {patch_size}"
        )
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; accepted: {list(NORMS)}")
    if axial_layout not in AXIAL_LAYOUTS:
        raise ValueError(
            f"unknown axial_layout {axial_layout!r}; accepted: {list(AXIAL_LAYOUTS)}"
        )
    if axial_layer_scale is not None and not (
        axial_layout == "residual" and math.isfinite(axial_layer_scale) and axial_layer_scale > 0
    ):
        raise ValueError(
            "axial_layer_scale must be None or a finite number > 0 with axial_layout "
            f"'residual', got {axial_layer_scale!r} with {axial_layout!r}"
        )
    if axial:
        if axial_depth < 1 or any(not 0 <= s < n for s in axial_stages):
            raise ValueError(
                f"axial_stages must index stages 0..{n - 1} and axial_depth ≥ 1, got "
                f"{tuple(axial_stages)}, {axial_depth}"
            )
        for s in axial_stages:
            if head_dim < 1 or features[s] % head_dim:
                raise ValueError(
                    f"stage {s} width {features[s]} must be a multiple of "
                    f"attention_head_dim {head_dim}"
                )


def _register_variant(name: str, axial: bool, dynamic: bool, summary: str) -> None:
    """Register a factory with TransMedNet's typed signature minus the two switches."""

    def factory(**kwargs: object) -> TransMedNet:
        return TransMedNet(axial=axial, dynamic=dynamic, **kwargs)  # type: ignore[arg-type]

    sig = inspect.signature(TransMedNet.__init__)
    params = [p for k, p in sig.parameters.items() if k not in ("self", "axial", "dynamic")]
    factory.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{summary}\n\nArguments: see TransMedNet."
    register_model(factory)


_register_variant("unet", False, False, "Residual 3D U-Net baseline (the ablation's reference).")
_register_variant("transmed_a", True, False, "TransMed-A: backbone + 3D axial attention.")
_register_variant("transmed_d", False, True, "TransMed-D: backbone with dynamic convolution.")
_register_variant("transmed_full", True, True, "TransMed: axial attention + dynamic convolution.")
# Configs stored before axial_layout existed were trained with the chained layout.
for _name in ("transmed_a", "transmed_full"):
    register_legacy_default(_name, "axial_layout", "chained")
