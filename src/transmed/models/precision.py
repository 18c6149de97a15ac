"""Mixed precision: one switch for every model (bf16 autocast on CPU; bf16/fp16 on CUDA)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def autocast(device: str | torch.device, precision: str = "fp32") -> Iterator[None]:
    """Context in which forward passes run at ``precision`` ("fp32", "bf16" or "fp16").

    fp16 needs CUDA (and a GradScaler in training); bf16 runs on CPU and CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; accepted: {list(PRECISIONS)}")
    device_type = torch.device(device).type
    if precision == "fp32":
        yield
        return
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use bf16 on CPU")
    with torch.autocast(device_type=device_type, dtype=_DTYPES[precision]):
        yield
