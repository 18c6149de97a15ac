"""The folds of an ensemble must agree before their probabilities are averaged.

A cross-validation folder's folds are averaged voxel by voxel on one network grid, so they must
have been trained on the same preprocessing (spacing, reference, crop, co-registration: the
grid and intensities the input is prepared on), with the same patch (the sliding window) and
the same output channels (what each channel means). A fold retrained with another setting
would otherwise be averaged in silently, or have its preprocessing silently replaced by
another fold's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from transmed.inference.checkpoint_config import patch_from_checkpoint, preprocess_from_checkpoint
from transmed.models.checkpoint import CheckpointError


def fold_name(path: Path) -> str:
    """How messages name a fold: ``fold_2`` for ``.../fold_2/checkpoints/final.pt``."""
    path = Path(path)
    return path.parents[1].name if path.parent.name == "checkpoints" else path.name


def _preprocessing(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """The checkpoint's preprocessing with defaults filled in (none stored = the default)."""
    return dataclasses.asdict(preprocess_from_checkpoint(ckpt, path))


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k} {b.get(k)!r} (not {a.get(k)!r})" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]  # fmt: skip


def check_fold_agreement(
    folds: Sequence[tuple[Path, torch.nn.Module, dict[str, Any]]],
) -> None:
    """Refuse an ensemble whose folds differ in preprocessing, patch size or output channels.

    Args:
        folds: ``(checkpoint path, model, checkpoint dict)`` of every fold, first one the
            reference the others are compared with.

    Raises:
        CheckpointError: naming the fold that differs, its file and what differs.
    """
    if len(folds) < 2:
        return
    path0, model0, ckpt0 = folds[0]
    prep0, patch0 = _preprocessing(ckpt0, path0), patch_from_checkpoint(ckpt0, path0)
    out0 = getattr(model0, "out_channels", None)
    first = f"{fold_name(path0)} ({path0})"
    for path, model, ckpt in folds[1:]:
        where = f"{fold_name(path)} ({path})"
        out = getattr(model, "out_channels", None)
        if out != out0:
            raise CheckpointError(
                f"{where}: {out} output channels where {first} has {out0}; the folds of an "
                "ensemble must predict the same channels (retrain it, or predict with one fold)"
            )
        diff = _differences(prep0, _preprocessing(ckpt, path))
        if diff:
            raise CheckpointError(
                f"{where}: trained with other preprocessing than {first}: {'; '.join(diff)}; "
                "the folds of an ensemble must share it (retrain that fold, or predict with "
                "the folds that agree)"
            )
        patch = patch_from_checkpoint(ckpt, path)
        if patch != patch0:
            raise CheckpointError(
                f"{where}: patch size {patch} where {first} has {patch0}; the folds "
                "of an ensemble must share the sliding window (retrain that fold, or predict "
                "with the folds that agree)"
            )
