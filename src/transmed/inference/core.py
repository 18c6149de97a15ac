"""The one forward path from a preprocessed image to region probabilities.

Validation during training, ``transmed predict``, cross-validation and the DICOM service all
call :func:`predict_probabilities`, with the window :func:`window_for_mode` gives for the
model's recorded inference mode (``sliding``: MONAI's Gaussian-weighted sliding window with the
training patch, the default; ``whole``: one forward over the whole volume). The mode is a
property of the model, never of the machine's free memory.
"""

from __future__ import annotations

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


@torch.inference_mode()
def predict_probabilities(
    model: SegmentationModel,
    image: np.ndarray | torch.Tensor,
    *,
    roi_size: tuple[int, int, int] | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    precision: str = "fp32",
    mirror: bool = False,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Sigmoid region probabilities (3, D, H, W) float32 for a (4, D, H, W) image.

    Args:
        roi_size: sliding-window size; ``None`` predicts the whole volume at once (models with
            a fixed size use it as the window when the volume is larger).
        overlap: sliding-window overlap fraction (Gaussian weighting).
        precision: "fp32", "bf16" or "fp16" (see :func:`transmed.models.autocast`).
        mirror: test-time augmentation, averaging the 8 mirrored predictions.
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

    if mirror:
        flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
        probs = sum(torch.sigmoid(run(x.flip(f)).flip(f) if f else run(x)) for f in flips)
        probs = probs / len(flips)
    else:
        probs = torch.sigmoid(run(x))
    return probs[0].float().cpu().numpy()  # (3, D, H, W)
