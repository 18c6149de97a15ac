"""3D dynamic convolution: K candidate kernels mixed per sample by an attention branch.

Chen et al., CVPR 2020, "Dynamic Convolution: Attention over Convolution Kernels", in 3D:

    W(x) = Σ_k π_k(x) W_k,   b(x) = Σ_k π_k(x) b_k,
    π(x) = softmax(MLP(GlobalAvgPool(x)) / τ).

The attention branch has no BatchNorm, so it behaves the same at batch size 1–2 (3D training).
The temperature τ starts high (near-uniform mixing, all kernels learn) and is annealed to 1 over
the first epochs (30 → 1 in the paper): ``temperature_schedule`` and ``set_dynamic_temperature``
are what the trainer calls each epoch.

Efficiency: the K kernels are aggregated per sample first (a (B, K) × (K, Cout·Cin·k³) product,
negligible next to the convolution), then the whole batch runs as ONE grouped convolution with
groups = B. At batch size 1 this is a single ordinary ``conv3d`` — the same cost as a static
convolution of the same shape plus the pooling and the tiny MLP.

On CPU, oneDNN's grouped 3D convolution is the slow path (forward + backward of a 24→24
3×3×3 convolution on 2×32×32×24: grouped 0.98 s, one ordinary convolution per sample 0.44 s,
on 2 cores), so ``batch_mode="auto"`` runs one ``conv3d`` per sample on CPU and the grouped
convolution on GPUs. Both give the same result (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DynamicConv3d(nn.Module):
    """Drop-in replacement for ``nn.Conv3d`` with K input-dependent mixed kernels.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as ``nn.Conv3d``
            (``padding=None`` means "same" for odd kernels: ``kernel_size // 2``).
        num_kernels: K, candidate kernels (4 in Chen et al.).
        reduction: the attention MLP's hidden width is ``max(in_channels // reduction, 4)``.
        temperature: initial softmax temperature τ.
        batch_mode: "grouped" (one grouped conv for the batch), "loop" (one conv per sample)
            or "auto" (loop on CPU, grouped elsewhere; see the module docstring).

    Shape: (B, Cin, D, H, W) → (B, Cout, D', H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
        num_kernels: int = 4,
        reduction: int = 4,
        temperature: float = 30.0,
        batch_mode: str = "auto",
    ) -> None:
        super().__init__()
        if batch_mode not in ("auto", "grouped", "loop"):
            raise ValueError(f"batch_mode must be 'auto', 'grouped' or 'loop', got {batch_mode!r}")
        self.batch_mode = batch_mode
        for name, v in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("kernel_size", kernel_size),
            ("stride", stride),
            ("num_kernels", num_kernels),
            ("reduction", reduction),
        ):
            if v < 1:
                raise ValueError(f"{name} must be ≥ 1, got {v}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.num_kernels = num_kernels
        self.temperature = float(temperature)
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels, in_channels, k, k, k))
        self.bias = nn.Parameter(torch.zeros(num_kernels, out_channels)) if bias else None
        hidden = max(in_channels // reduction, 4)
        self.attention = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_kernels)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each candidate kernel gets nn.Conv3d's own initialisation, independently (Chen et al.).
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size**3)
            nn.init.uniform_(self.bias, -bound, bound)

    def set_temperature(self, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def kernel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Mixing weights π (B, K), rows summing to 1."""
        pooled = x.mean(dim=(2, 3, 4))  # (B, Cin)
        return torch.softmax(self.attention(pooled) / self.temperature, dim=1)  # (B, K)

    def aggregated_weight(self, pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample kernels (B·Cout, Cin, k, k, k) and biases (B·Cout,) for mixing weights π."""
        b = pi.shape[0]
        k = self.kernel_size
        w = pi.to(self.weight.dtype) @ self.weight.reshape(self.num_kernels, -1)  # (B, Cout·Cin·k³)
        w = w.reshape(b * self.out_channels, self.in_channels, k, k, k)
        bias = None
        if self.bias is not None:
            bias = (pi.to(self.bias.dtype) @ self.bias).reshape(b * self.out_channels)
        return w, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DynamicConv3d expects (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}"
            )
        pi = self.kernel_attention(x)  # (B, K)
        w, bias = self.aggregated_weight(pi)  # (B·Cout, Cin, k, k, k), (B·Cout,)
        if b == 1:
            return F.conv3d(x, w, bias, self.stride, self.padding)  # (1, Cout, D', H', W')
        loop = self.batch_mode == "loop" or (self.batch_mode == "auto" and x.device.type == "cpu")
        if loop:
            c = self.out_channels
            return torch.cat(
                [
                    F.conv3d(
                        x[i : i + 1], w[i * c : (i + 1) * c],
                        None if bias is None else bias[i * c : (i + 1) * c],
                        self.stride, self.padding,
                    )  # (1, Cout, D', H', W')
                    for i in range(b)
                ]
            )  # fmt: skip
        y = F.conv3d(
            x.reshape(1, b * self.in_channels, *x.shape[2:]),  # (1, B·Cin, D, H, W)
            w,
            bias,
            self.stride,
            self.padding,
            groups=b,
        )  # (1, B·Cout, D', H', W')
        return y.reshape(b, self.out_channels, *y.shape[2:])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, num_kernels={self.num_kernels}, "
            f"temperature={self.temperature:g}"
        )


def temperature_schedule(
    epoch: float, anneal_epochs: float = 10.0, start: float = 30.0, end: float = 1.0
) -> float:
    """Linear annealing of τ from ``start`` to ``end`` over ``anneal_epochs`` (Chen et al.)."""
    if anneal_epochs <= 0 or epoch >= anneal_epochs:
        return end
    frac = max(epoch, 0.0) / anneal_epochs
    return start + (end - start) * frac


def set_dynamic_temperature(model: nn.Module, temperature: float) -> int:
    """Set τ on every ``DynamicConv3d`` in ``model``; returns how many were set."""
    n = 0
    for m in model.modules():
        if isinstance(m, DynamicConv3d):
            m.set_temperature(temperature)
            n += 1
    return n
