"""3D axial self-attention with a learned relative position bias per axis.

Full self-attention over a D×H×W grid scores every pair of the N = D·H·W tokens: N² scores.
Axial attention (Ho et al. 2019, "Axial Attention in Multidimensional Transformers"; Wang et
al., ECCV 2020, "Axial-DeepLab") attends along one axis at a time, so each token scores only the
D + H + W tokens on its three axis lines: N·(D+H+W) scores. For a 128³ grid that is
128³ / 384 ≈ 5,461 times fewer scores.

Per axis a, with queries Q, keys K and values V gathered along that axis,

    Attention_a(X) = Softmax(Q Kᵀ / sqrt(d_k) + B_a) V,

where B_a[h, i, j] = t_a[h, clip(j − i, −R, R)] is a learned relative position bias per head
(Shaw et al. 2018). Computed with ``torch.nn.functional.scaled_dot_product_attention`` (fused
kernels, the bias passed as the additive mask).

**Layout ("residual", the default).** The three axes are applied *in sequence* (D, then H,
then W), each as its own pre-norm residual sub-block with its own LayerNorm, Q/K/V and output
projections and bias table, then an MLP sub-block:

    t = t + proj_D(attn_D(LN_D(t)));  t = t + proj_H(attn_H(LN_H(t)));
    t = t + proj_W(attn_W(LN_W(t)));  t = t + MLP(LN(t))

as in the axial transformer of Ho et al. (2019). After one block every voxel has gathered
information from the whole volume (D-line → H-plane → full grid). Queries and keys are
layer-normalised per head before their dot product ("QK-norm": Dehghani et al. 2023, "Scaling
Vision Transformers to 22 Billion Parameters"; Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities"), which bounds the attention logits whatever
the scale of the Q/K weights.

**LayerScale (optional, residual layout only).** With ``layer_scale=ε`` every residual branch
(the three axes and the MLP) is multiplied by its own learned per-channel vector, initialised
to ε (Touvron et al., ICCV 2021, "Going deeper with Image Transformers", CaiT):
``t = t + γ_D ⊙ proj_D(attn_D(LN_D(t)))`` and so on. The block then starts as the identity and
its update grows only as far as training asks. Without it, the shipped generalist v2.1's block
at 1/8 resolution adds an update 21 times the RMS of its input
(``benchmarks/results/generalist/v2_1_candidate/``), rewriting the convolutional features it is
added to. Off by default (``None``), so every stored config rebuilds unchanged.

**Layout "chained" (the v1 weights only).** The first layout, kept so that weights trained with
it (the shipped generalist v1.x) load and predict unchanged: one LayerNorm, then the three axes
chained with no normalisation or residual between them, one output projection:
``x + proj(attn_W(attn_H(attn_D(LN(x)))))``. Do not train new models with it. In the generalist
v1.0 (5,500 steps) the value projections compounded along the chain (RMS 1.2 → 3.2 → 19 → 70
after D, H, W at the 1/8 stage), the attention logits with them (std 73 → 1,519 → 58,459), so
the attention was one-hot (entropy 0.0 of a possible 2.08 nats) and the block's output was about
190 times its input, swamping the convolutional features it was added to
(``benchmarks/results/generalist/axial_layout/``).

**Lengths beyond training.** Relative distances farther than the table's reach R are *clipped*
to ±R: the bias for "far away" is the one learned for the largest distance seen in training.
Any axis length works at inference (whole-volume prediction on a 240×240×155 case); entries of
the table beyond the training patch would never receive gradient, so R should be the training
patch length at that stage minus one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RelativePositionBias1d(nn.Module):
    """Learned bias B[h, i, j] = table[h, clip(j − i, −R, R) + R] for a sequence of any length.

    Args:
        num_heads: attention heads (one bias per head).
        max_distance: R, the largest relative distance with its own entry; farther is clipped.
    """

    def __init__(self, num_heads: int, max_distance: int) -> None:
        super().__init__()
        if max_distance < 1:
            raise ValueError(f"max_distance must be ≥ 1, got {max_distance}")
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * max_distance + 1))
        nn.init.trunc_normal_(self.table, std=0.02)

    def relative_index(self, length: int, device: torch.device) -> torch.Tensor:
        """(L, L) integer index into the table."""
        pos = torch.arange(length, device=device)
        rel = pos[None, :] - pos[:, None]  # (L, L): j - i
        return rel.clamp(-self.max_distance, self.max_distance) + self.max_distance

    def forward(self, length: int) -> torch.Tensor:
        """Bias (heads, L, L) for a sequence of ``length`` tokens."""
        return self.table[:, self.relative_index(length, self.table.device)]


class AxialSelfAttention(nn.Module):
    """Multi-head self-attention along one axis of a channel-last (B, D, H, W, C) tensor.

    Args:
        channels: feature channels C (divisible by ``num_heads``).
        num_heads: attention heads.
        max_distance: the relative-bias reach R (farther distances are clipped).
        qkv_bias: learn a bias in the Q/K/V projection.
        qk_norm: layer-normalise queries and keys per head before their dot product.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        max_distance: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.q_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.bias = RelativePositionBias1d(num_heads, max_distance)

    def lines(self, x: torch.Tensor, axis: int) -> tuple[torch.Tensor, ...]:
        """Queries (QK-normed when enabled), keys and values of every line along ``axis`` of
        (B, D, H, W, C): each (N, heads, L, head_dim), N = the number of lines."""
        x = x.movedim(axis, 3)  # (B, P, Q, L, C): the attended axis next to channels
        b, p, q, length, _ = x.shape
        qkv = self.qkv(x).reshape(b * p * q, length, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, N, heads, L, hd) with N = B·P·Q lines
        return self.q_norm(qkv[0]), self.k_norm(qkv[1]), qkv[2]

    def attention_logits(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """QKᵀ/√d + B along ``axis``, (N, heads, L, L): what ``forward``'s softmax sees (for
        diagnostics; ``forward`` itself never materialises it)."""
        query, key, _ = self.lines(x, axis)
        bias = self.bias(query.shape[2]).to(query.dtype)[None]
        return query @ key.transpose(-1, -2) / math.sqrt(self.head_dim) + bias

    def forward(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Attend along ``axis`` (1, 2 or 3 of (B, D, H, W, C)); returns the same shape."""
        query, key, value = self.lines(x, axis)  # (N, heads, L, hd)
        # (1, heads, L, L), broadcast over the N lines. A 4D mask matters: with a 3D one torch
        # 2.13 falls back to the unfused math kernel on CPU (6× slower at L = 64, measured).
        bias = self.bias(query.shape[2]).to(query.dtype)[None]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        shape = x.movedim(axis, 3).shape  # (B, P, Q, L, C)
        out = out.transpose(1, 2).reshape(shape)
        return out.movedim(3, axis)


#: Block layouts: "residual" (default) and "chained" (the v1 weights; see the module doc).
AXIAL_LAYOUTS = ("residual", "chained")


class AxialAttentionBlock3d(nn.Module):
    """Transformer block with sequential D→H→W axial attention and an MLP.

    Args:
        channels: feature channels C (divisible by ``num_heads``).
        num_heads: attention heads per axis.
        max_len: the longest axis length seen in training at this stage; relative distances up
            to ``max_len − 1`` get their own bias, farther ones are clipped (see module doc).
        mlp_ratio: hidden width of the MLP relative to ``channels``.
        layout: "residual" (a pre-norm residual sub-block per axis, QK-norm) or "chained"
            (the v1 layout, kept to load its weights; see the module doc).
        layer_scale: None (off) or ε > 0: each residual branch (the three axes and the MLP)
            is scaled by a learned per-channel vector initialised to ε (LayerScale, CaiT;
            residual layout only; see the module doc).

    Shape: (B, C, D, H, W) → (B, C, D, H, W), any D, H, W ≥ 1.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 4,
        max_len: int = 16,
        mlp_ratio: float = 2.0,
        layout: str = "residual",
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or num_heads < 1 or channels % num_heads:
            raise ValueError(
                f"channels ({channels}) must be a positive multiple of num_heads ({num_heads})"
            )
        if max_len < 2:
            raise ValueError(f"max_len must be ≥ 2, got {max_len}")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        if layout not in AXIAL_LAYOUTS:
            raise ValueError(f"unknown axial layout {layout!r}; accepted: {list(AXIAL_LAYOUTS)}")
        if layer_scale is not None:
            if layout != "residual":
                raise ValueError("layer_scale needs the residual layout (the chained layout has "
                                 "no per-axis residual branch to scale)")  # fmt: skip
            if not (math.isfinite(layer_scale) and layer_scale > 0):
                raise ValueError(
                    f"layer_scale must be a finite number > 0 or None, got {layer_scale}"
                )
        self.layout = layout
        residual = layout == "residual"
        self.attn = nn.ModuleList(
            AxialSelfAttention(channels, num_heads, max_len - 1, qk_norm=residual)
            for _ in range(3)
        )
        if residual:
            self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(3))
            self.projs = nn.ModuleList(nn.Linear(channels, channels) for _ in range(3))
        else:
            self.norm1 = nn.LayerNorm(channels)
            self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        hidden = max(1, int(round(channels * mlp_ratio)))
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels)
        )
        self.apply(_init_linear)
        # LayerScale: one learned per-channel gain per residual branch (D, H, W, MLP)
        self.gammas = (
            nn.Parameter(torch.full((4, channels), float(layer_scale)))
            if layer_scale is not None else None
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.permute(0, 2, 3, 4, 1)  # (B, D, H, W, C)
        if self.layout == "residual":
            for axis, norm, attn, proj in zip((1, 2, 3), self.norms, self.attn, self.projs,
                                              strict=True):  # fmt: skip
                h = proj(attn(norm(t), axis))  # (B, D, H, W, C), along D, then H, then W
                t = t + (h if self.gammas is None else self.gammas[axis - 1] * h)
        else:
            h = self.norm1(t)
            for axis, attn in zip((1, 2, 3), self.attn, strict=True):
                h = attn(h, axis)  # (B, D, H, W, C), chained: D, then H, then W
            t = t + self.proj(h)
        h = self.mlp(self.norm2(t))  # (B, D, H, W, C)
        t = t + (h if self.gammas is None else self.gammas[3] * h)
        return t.permute(0, 4, 1, 2, 3)  # (B, C, D, H, W)


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
