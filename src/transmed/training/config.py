"""Training configuration: one validated dataclass-like model, read from JSON or YAML.

Unknown keys and bad values are refused with the key named (pydantic, ``extra="forbid"``).
The resolved config is saved into the run folder and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from transmed.transforms.augment import AugmentConfig


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the key."""


class TrainConfig(BaseModel):
    """Everything that defines a training run (defaults: a BraTS-scale run on a GPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "transmed_full"  # registry name
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # typed constructor arguments
    epochs: int = Field(100, ge=1)
    iters_per_epoch: int = Field(250, ge=1)  # optimisation steps per epoch (nnU-Net: 250)
    batch_size: int = Field(2, ge=1)
    patch_size: tuple[int, int, int] = (128, 128, 128)  # voxels, on the preprocessed grid
    foreground_prob: float = Field(0.33, ge=0.0, le=1.0)  # patches centred on tumour (nnU-Net)
    lr: float = Field(1e-3, gt=0.0)  # AdamW peak learning rate
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: float = Field(2.0, ge=0.0)
    schedule: Literal["poly", "cosine"] = "poly"
    grad_clip: float = Field(12.0, gt=0.0)  # max gradient norm
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_checkpointing: bool = False
    deep_supervision: bool = False
    dice_weight: float = Field(1.0, ge=0.0)
    ce_weight: float = Field(1.0, ge=0.0)  # binary cross-entropy on the region channels
    temperature_start: float = Field(30.0, gt=0.0)  # dynamic-convolution softmax temperature
    temperature_end: float = Field(1.0, gt=0.0)
    temperature_epochs: float = Field(10.0, ge=0.0)  # linear annealing span
    val_every: int = Field(5, ge=1)  # validate every N epochs (and after the last)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # held-out share when no split is given
    val_overlap: float = Field(0.5, ge=0.0, lt=1.0)  # sliding-window overlap in validation
    max_nonfinite: int = Field(10, ge=1)  # consecutive non-finite losses before the run stops
    num_workers: int = Field(2, ge=0)
    seed: int = Field(0, ge=0)
    augment: dict[str, Any] = Field(default_factory=dict)  # AugmentConfig fields
    # start from these weights: a checkpoint path, or the name of a shipped model
    # ("generalist"); the model and its arguments then come from that checkpoint
    init_from: str | None = None

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(s < 8 for s in v):
            raise ValueError(f"every patch side must be ≥ 8 voxels, got {v}")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from transmed.models import list_models

        if v not in list_models():
            raise ValueError(f"unknown model {v!r}; available: {list_models()}")
        return v

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in dataclasses.fields(AugmentConfig)} - {"seed"}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown augment key(s) {unknown}; accepted: {sorted(known)}")
        AugmentConfig(**v)  # validates ranges
        return v

    def augment_config(self, seed: int | None = None) -> AugmentConfig:
        return AugmentConfig(**self.augment, seed=seed)

    def pinned(self) -> TrainConfig:
        """This config for a new run: model arguments whose default once changed are written
        out (``registry.pinned_kwargs``), so its saved config resumes as the same model."""
        from transmed.models import pinned_kwargs

        kwargs = pinned_kwargs(self.model, self.model_kwargs)
        return self.model_copy(update={"model_kwargs": kwargs})

    def stored(self) -> TrainConfig:
        """This config as read back from a run: model arguments it predates take the values
        they had when it was written (``registry.stored_kwargs``)."""
        from transmed.models import stored_kwargs

        kwargs = stored_kwargs(self.model, self.model_kwargs)
        return self.model_copy(update={"model_kwargs": kwargs})


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a JSON (``.json``) or YAML config file (see ``io.config_file``).

    Raises:
        ConfigError: the file is missing, unparsable or not a mapping (the message names it).
    """
    from transmed.io.config_file import read_mapping

    return read_mapping(path, ConfigError)


def validation_message(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``key.sub: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                     for e in exc.errors())  # fmt: skip


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a JSON/YAML config (or defaults), apply ``overrides`` (``None`` values ignored)."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid config: {validation_message(exc)}") from None
