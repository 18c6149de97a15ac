"""The one forward path from a preprocessed image to region probabilities.

Validation during training, ``transmed predict``, cross-validation and the DICOM service all
call :func:`predict_probabilities`, with the window :func:`window_for_mode` gives for the
model's recorded inference mode (``sliding``: MONAI's Gaussian-weighted sliding window with the
training patch, the default; ``whole``: one forward over the whole volume). The mode is a
property of the model, never of the machine's free memory.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from transmed.models import autocast
from transmed.models.base import SegmentationModel
from transmed.models.checkpoint import INFERENCE_MODES


def window_for_mode(mode: str, roi_size: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The ``roi_size`` argument of :func:`predict_probabilities` for an inference mode:
    the training patch for ``"sliding"``, ``None`` (whole volume) for ``"whole"``."""
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference mode {mode!r}: expected one of {INFERENCE_MODES}")
    return tuple(roi_size) if mode == "sliding" else None  # type: ignore[return-value]


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: full res


def mirror_axes(mirror: bool | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The spatial axes a ``mirror`` setting flips: True = all three, False = none."""
    if isinstance(mirror, bool):
        return (0, 1, 2) if mirror else ()
    axes = tuple(int(a) for a in mirror)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror axes must be distinct spatial axes among 0, 1, 2, got {mirror!r}")
    return tuple(sorted(axes))


@torch.inference_mode()
def predict_probabilities(
    model: SegmentationModel,
    image: np.ndarray | torch.Tensor,
    *,
    roi_size: tuple[int, int, int] | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    precision: str = "fp32",
    mirror: bool | tuple[int, ...] = False,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Sigmoid region probabilities (3, D, H, W) float32 for a (4, D, H, W) image.

    Args:
        roi_size: sliding-window size; ``None`` predicts the whole volume at once (models with
            a fixed size use it as the window when the volume is larger).
        overlap: sliding-window overlap fraction (Gaussian weighting).
        precision: "fp32", "bf16" or "fp16" (see :func:`transmed.models.autocast`).
        mirror: test-time augmentation by mirroring. ``True`` averages the 8 predictions
            mirrored along every combination of the three spatial axes; a tuple of spatial
            axes (0 = D, 1 = H, 2 = W) averages the ``2**len(axes)`` combinations of those
            axes only, e.g. ``(0,)`` for left-right on a RAS grid, the only mirroring a model
            trained with left-right flips has seen. ``False`` or ``()``: no mirroring.
    """
    if image.ndim != 4:
        raise ValueError(f"expected an image (C, D, H, W), got shape {tuple(image.shape)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    x = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image)
    x = x.to(device=device, dtype=torch.float32)[None]  # (1, C, D, H, W)
    fixed = getattr(model, "fixed_size", None)
    too_big = fixed is not None and any(s > f for s, f in zip(x.shape[2:], fixed, strict=True))
    if roi_size is None and too_big:
        roi_size = tuple(fixed)

    def run(t: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            if roi_size is None or all(s <= r for s, r in zip(t.shape[2:], roi_size, strict=False)):
                return _forward(model, t).float()
            return sliding_window_inference(
                t, roi_size, sw_batch_size, lambda p: _forward(model, p).float(),
                overlap=overlap, mode="gaussian",
            )  # fmt: skip

    axes = mirror_axes(mirror)
    if axes:
        flips = [tuple(2 + a for a in combo) for n in range(len(axes) + 1)
                 for combo in itertools.combinations(axes, n)]  # fmt: skip
        probs = sum(torch.sigmoid(run(x.flip(f)).flip(f) if f else run(x)) for f in flips)
        probs = probs / len(flips)
    else:
        probs = torch.sigmoid(run(x))
    return probs[0].float().cpu().numpy()  # (3, D, H, W)
