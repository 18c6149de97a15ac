"""FLOPs of one forward with ``torch.utils.flop_counter.FlopCounterMode``.

Convention (PyTorch's): a multiply-add counts as 2 FLOPs; only matrix products, convolutions and
attention are counted (norms, activations and additions are not). A Conv3d with C_in → C_out
channels, kernel k³ and an output of D·H·W voxels costs 2·C_in·C_out·k³·D·H·W per sample.

PyTorch's table has no entry for ``aten._scaled_dot_product_flash_attention_for_cpu``, the fused
kernel SDPA uses on CPU without a mask, so attention would silently count as 0 FLOPs on CPU; we
add it with PyTorch's own SDPA formula (``sdpa_flop_count``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_flash_sdpa_flop(
    query_shape: Any,
    key_shape: Any,
    value_shape: Any,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    # Same FLOPs as the math path: Q·Kᵀ and scores·V, two batched matrix products.
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict[Any, Any]:
    ops = torch.ops.aten
    mapping: dict[Any, Any] = {}
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa_flop
    return mapping


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the CPU fused attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=_custom_mapping())


def count_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``module(x)`` (one forward, under ``torch.inference_mode``)."""
    with torch.inference_mode(), flop_counter() as counter:
        module(x)
    return int(counter.get_total_flops())


class OpRecorder(TorchDispatchMode):
    """Record the names of the aten ops that run, e.g. which SDPA kernel was chosen.

    Args:
        prefix: keep only op names starting with it (``"aten::_scaled_dot_product"``).
    """

    def __init__(self, prefix: str = "aten::") -> None:
        super().__init__()
        self.prefix = prefix
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.name()
        if name.startswith(self.prefix) and name not in self.names:
            self.names.append(name)
        return func(*args, **(kwargs or {}))


def prewarm_runtime(device: str = "cpu") -> None:
    """Load what the first measured forward would otherwise load inside the measurement.

    The first ``FlopCounterMode`` use imports Python modules (~2 s, tens of MiB), the first
    parallel op starts the OpenMP thread pool and the first convolution pages in oneDNN code.
    None of that is a model's working memory or latency, so a tiny convolution, linear layer,
    LayerNorm and attention run once (under the FLOP counter) before the memory baseline.
    """
    x = torch.randn(1, 4, 4, 4, 4, device=device)  # (B, C, D, H, W)
    conv = torch.nn.Conv3d(4, 8, 3, padding=1).to(device)
    lin = torch.nn.Linear(8, 24).to(device)
    norm = torch.nn.LayerNorm(8).to(device)
    with torch.inference_mode(), flop_counter(), OpRecorder():
        t = conv(x).flatten(2).transpose(1, 2)  # (B, N, 8)
        q, k, v = lin(norm(t)).reshape(1, 64, 3, 2, 4).permute(2, 0, 3, 1, 4)
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(64, 64))
