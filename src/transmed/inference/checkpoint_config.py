"""The configuration a checkpoint carries, validated before it is used, naming the file.

A checkpoint's ``preprocess_config`` goes through :class:`PreprocessConfig` itself (pydantic
checks the field types, the dataclass its own ranges), so fields added to it are accepted as
soon as they exist; keys it does not have are refused rather than dropped, because a model
trained with a preprocessing step this version does not know cannot be reproduced.
Of ``train_config`` inference reads only ``patch_size`` (the sliding window); it is checked
with :class:`TrainConfig`'s rule (three sides of at least 8 voxels). TrainConfig itself lives
in ``training``, which sits above inference, so it cannot be imported here. A ``postprocess``
entry (the small-component clean-up chosen for the model) goes through :class:`PostprocessConfig`,
and a ``tta_axes`` entry (the mirroring test-time augmentation chosen for the model) through
:func:`transmed.inference.core.mirror_axes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from transmed.inference.postprocess import PostprocessConfig
from transmed.models.checkpoint import CheckpointError
from transmed.transforms.preprocess import PreprocessConfig

_PREPROCESS = TypeAdapter(PreprocessConfig)


class _TrainPart(BaseModel):
    """The part of a checkpoint's ``train_config`` that inference uses (other keys ignored)."""

    model_config = ConfigDict(extra="ignore")

    patch_size: tuple[Annotated[int, Field(ge=8)], ...] | None = Field(
        None, min_length=3, max_length=3
    )  # voxels; TrainConfig: every patch side ≥ 8


def _errors(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join([prefix, *(str(p) for p in err["loc"])])
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def preprocess_from_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> PreprocessConfig:
    """The checkpoint's :class:`PreprocessConfig` (the default one when it has none).

    Raises:
        CheckpointError: not a mapping, an unknown key, or a value PreprocessConfig refuses.
    """
    raw = ckpt.get("preprocess_config")
    if raw is None:
        return PreprocessConfig()
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{path}: preprocess_config: expected a mapping of PreprocessConfig fields, got "
            f"{type(raw).__name__}"
        )
    known = {f.name for f in dataclasses.fields(PreprocessConfig)}
    unknown = sorted(str(k) for k in set(raw) - known)
    if unknown:
        raise CheckpointError(
            f"{path}: unknown preprocess_config key(s) {unknown}; this version knows "
            f"{sorted(known)} (a checkpoint from a newer TransMed?)"
        )
    try:
        return _PREPROCESS.validate_python(dict(raw))
    except ValidationError as exc:
        raise CheckpointError(f"{path}: {_errors(exc, 'preprocess_config')}") from None


def patch_from_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> tuple[int, int, int] | None:
    """The training patch size ``(D, H, W)`` voxels from ``train_config``, or None.

    Raises:
        CheckpointError: ``train_config`` that is not a mapping, or a patch that is not three
            sides of at least 8 voxels.
    """
    raw = ckpt.get("train_config")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: train_config: expected a mapping, got {type(raw).__name__}")
    try:
        patch = _TrainPart.model_validate(dict(raw)).patch_size
    except ValidationError as exc:
        raise CheckpointError(f"{path}: {_errors(exc, 'train_config')}") from None
    return patch  # type: ignore[return-value]


def postprocess_from_checkpoint(
    ckpt: Mapping[str, Any], path: str | Path
) -> PostprocessConfig | None:
    """The post-processing the checkpoint recommends (``ckpt["postprocess"]``, chosen on the
    model's validation data, as nnU-Net stores its post-processing with the model), or None.

    Raises:
        CheckpointError: not a mapping of :class:`PostprocessConfig` fields, or a bad value.
    """
    raw = ckpt.get("postprocess")
    if raw is None:
        return None
    known = {f.name for f in dataclasses.fields(PostprocessConfig)}
    if not isinstance(raw, Mapping) or set(raw) - known:
        raise CheckpointError(
            f"{path}: postprocess: expected a mapping with keys among {sorted(known)}, got "
            f"{raw!r:.200}"
        )
    try:
        return PostprocessConfig(**{k: v if isinstance(v, bool) else float(v)
                                    for k, v in raw.items()})  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: postprocess: {exc}") from None


def tta_from_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> tuple[int, ...]:
    """The spatial axes the checkpoint recommends mirroring at test time (``ckpt["tta_axes"]``,
    e.g. ``[0]``: left-right on the RAS working grid, chosen on the model's decision data);
    ``()`` (no mirroring) when it records none.

    Raises:
        CheckpointError: not a list of distinct spatial axes among 0, 1, 2.
    """
    from transmed.inference.core import mirror_axes

    raw = ckpt.get("tta_axes")
    if raw is None:
        return ()
    ints = isinstance(raw, list | tuple) and all(
        isinstance(a, int) and not isinstance(a, bool) for a in raw
    )
    if not ints:
        raise CheckpointError(f"{path}: tta_axes: expected a list of spatial axes, got {raw!r:.80}")
    try:
        return mirror_axes(tuple(raw))
    except ValueError as exc:
        raise CheckpointError(f"{path}: tta_axes: {exc}") from None
