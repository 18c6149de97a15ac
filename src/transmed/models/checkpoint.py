"""Checkpoints that carry their own model config, written atomically, read with weights_only.

A checkpoint is a plain dict of tensors and JSON-like values (no pickled classes), so
``torch.load(..., weights_only=True)`` reads it; there is no fallback to unsafe unpickling.

It lives with the models, below both training (which writes checkpoints) and inference (which
reads them), so neither imports the other for it; ``transmed.training.checkpoint`` is an alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transmed.io.atomic import atomic_write

CHECKPOINT_FORMAT = 1

#: How a checkpoint's model is run at inference, recorded in every checkpoint
#: (``"inference_mode"``) so that ``predict`` and training validation give one answer on every
#: machine. ``"sliding"``: MONAI's Gaussian sliding window with the training patch, the
#: statistics the model was trained on (instance norm, dynamic-convolution attention and the
#: axial-attention reach all see patch-sized inputs; nnU-Net's choice). ``"whole"``: one
#: forward over the whole volume. They do not agree closely enough to swap one for the other
#: behind the user's back (see benchmarks/results/mode_agreement.md), so the mode never depends
#: on free memory.
INFERENCE_MODES = ("sliding", "whole")
DEFAULT_INFERENCE_MODE = "sliding"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save a training state; ``state['model_config']`` must rebuild the model."""
    if "model_config" not in state or "model" not in state:
        raise ValueError("a checkpoint needs 'model' (state dict) and 'model_config'")
    mode = state.get("inference_mode", DEFAULT_INFERENCE_MODE)
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference_mode {mode!r}: expected one of {INFERENCE_MODES}")
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, **state, "inference_mode": mode}, path)


def inference_mode(ckpt: dict[str, Any], path: str | Path) -> str:
    """The inference mode a checkpoint records (:data:`DEFAULT_INFERENCE_MODE` when older
    checkpoints have none).

    Raises:
        CheckpointError: a recorded mode that is not one of :data:`INFERENCE_MODES`.
    """
    mode = ckpt.get("inference_mode", DEFAULT_INFERENCE_MODE)
    if mode not in INFERENCE_MODES:
        raise CheckpointError(f"{path}: inference_mode {mode!r}: expected one of {INFERENCE_MODES}")
    return str(mode)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its structure.

    Raises:
        CheckpointError: missing, truncated or corrupt file, or not a TransMed checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle error, disallowed global, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: not a TransMed checkpoint (no model/model_config)")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT}"
        )
    return ckpt


def load_model_and_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint's own config, load its weights (eval mode), and
    return it with the checkpoint dict (train/preprocess configs travel in it).

    Raises:
        CheckpointError: unreadable file, or a config/weights that do not rebuild the model.
    """
    from transmed.models import create_model_from_config

    ckpt = load_checkpoint(path, map_location)
    try:
        model = create_model_from_config(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not match the model config ({exc})") from None
    temperature = checkpoint_temperature(ckpt)
    if temperature is not None:
        from transmed.models.layers import set_dynamic_temperature

        set_dynamic_temperature(model, temperature)
    return model.to(map_location).eval(), ckpt


def checkpoint_temperature(ckpt: dict[str, Any]) -> float | None:
    """The dynamic-convolution temperature τ the checkpoint's weights were trained at.

    Recorded as ``dynamic_temperature`` by the trainer; for older checkpoints, recomputed from
    their training config and epoch with the trainer's own schedule. ``None`` when neither is
    there (an untrained model keeps its constructor's τ).
    """
    if ckpt.get("dynamic_temperature") is not None:
        return float(ckpt["dynamic_temperature"])
    cfg, epoch = ckpt.get("train_config") or {}, ckpt.get("epoch")
    keys = ("temperature_epochs", "temperature_start", "temperature_end")
    if epoch is None or not all(k in cfg for k in keys):
        return None
    from transmed.models.layers import temperature_schedule

    return float(temperature_schedule(float(epoch), *(float(cfg[k]) for k in keys)))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from a checkpoint's own config and load its weights (eval mode)."""
    return load_model_and_checkpoint(path, map_location)[0]


def save_untrained_checkpoint(
    path: str | Path,
    name: str,
    *,
    patch_size: tuple[int, int, int] = (128, 128, 128),
    preprocess: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> Path:
    """A randomly initialised registry model saved as a complete checkpoint.

    For benchmarks (speed and memory do not depend on the weights) and plumbing tests; never
    for segmentation quality. ``preprocess`` is a ``PreprocessConfig`` as a dict; ``None``
    leaves it out, and the predictor then uses the default preprocessing.
    """
    from transmed.models import create_model

    model = create_model(name, **model_kwargs)
    state: dict[str, Any] = {
        "model": model.state_dict(), "model_config": model.config,
        "train_config": {"patch_size": list(patch_size)},
    }  # fmt: skip
    if preprocess is not None:
        state["preprocess_config"] = preprocess
    return save_checkpoint(path, state)
