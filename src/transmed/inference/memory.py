"""How much memory a whole-volume forward needs: a measured estimate per model.

The inference mode is a recorded property of the model (:mod:`transmed.models.checkpoint`),
never chosen from free memory. This estimate serves ``--mode whole --memory-budget``, which
refuses a case that would not fit rather than switching to the sliding window behind the
user's back, and the benchmarks.

The estimate is measured, not guessed: one forward of the model on a small calibration volume
(``CALIBRATION_SHAPE``), its peak working memory (RSS high-water mark on CPU, the caching
allocator's peak on CUDA; see :mod:`transmed.inference.memory_probe`) divided by the voxel
count, times the case's (padded) voxel count, times a safety factor. Activation memory of
these networks grows linearly with the voxels (axial attention too: O(N·L) with L the longest
axis at 1/8 or 1/16 resolution); the factor covers the attention's extra length and allocator
slack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from transmed.inference.memory_probe import MemoryProbe, meminfo_bytes

CALIBRATION_SHAPE = (64, 64, 64)
SAFETY_FACTOR = 1.5
FALLBACK_BYTES_PER_VOXEL = 4096  # when no measurement is possible: conservative
DEFAULT_BUDGET_FRACTION = 0.5  # of the memory available when no budget is given


def available_bytes(device: str | torch.device = "cpu") -> int:
    """Memory free for inference now: ``MemAvailable`` on CPU, free device memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(meminfo_bytes("MemAvailable") or 8 * 2**30)


def default_budget(device: str | torch.device = "cpu") -> int:
    """The budget when the user gives none: half of what is available now."""
    return int(available_bytes(device) * DEFAULT_BUDGET_FRACTION)


def parse_budget(text: str | float | int | None) -> int | None:
    """``"6G"``, ``"512M"``, ``"2.5GiB"`` or a number of GiB → bytes; ``None``/"auto" → None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value, unit = float(text), "G"
    else:
        raw = text.strip().upper().replace("IB", "").replace("B", "")
        if raw in ("", "AUTO"):
            return None
        unit = raw[-1] if raw[-1] in "KMGT" else "G"
        number = raw[:-1] if raw[-1] in "KMGT" else raw
        try:
            value = float(number)
        except ValueError:
            msg = f"memory budget {text!r}: expected e.g. '6G', '512M' or 'auto'"
            raise ValueError(msg) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"memory budget {text!r}: must be a positive size")
    return int(value * 1024 ** "KMGT".index(unit) * 1024)


def padded_voxels(shape: Sequence[int], divisor: int) -> int:
    """Voxels after padding each axis up to a multiple of ``divisor`` (what the model sees)."""
    return math.prod(-(-int(s) // divisor) * divisor for s in shape)


@torch.inference_mode()
def measure_bytes_per_voxel(
    model: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "fp32"
) -> float:
    """Peak forward working memory per input voxel, from one calibration forward.

    Falls back to :data:`FALLBACK_BYTES_PER_VOXEL` where the peak cannot be reset (no
    ``/proc/self/clear_refs``), so the answer errs towards the sliding window.
    """
    from transmed.inference.core import predict_probabilities

    shape = tuple(getattr(model, "fixed_size", None) or CALIBRATION_SHAPE)
    image = torch.zeros((model.in_channels, *shape), device=device)
    probe = MemoryProbe(str(device))
    probe.baseline()
    predict_probabilities(model, image, roi_size=None, precision=precision, device=device)
    report = probe.report()
    if report.method == "ru_maxrss":
        return float(FALLBACK_BYTES_PER_VOXEL)
    return max(report.forward_peak_bytes, 1) / math.prod(shape)


def whole_volume_bytes(bytes_per_voxel: float, shape: Sequence[int], divisor: int) -> int:
    """Estimated peak working memory of a whole-volume forward on ``shape`` (bytes)."""
    return int(bytes_per_voxel * padded_voxels(shape, divisor) * SAFETY_FACTOR)
