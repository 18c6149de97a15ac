"""Federation settings: one validated model, read from JSON or YAML like ``TrainConfig``.

The ``train`` block is a plain :class:`~transmed.training.config.TrainConfig` (model, patch,
batch, learning rate, augmentation): every site trains with TransMed's own trainer, and one
round is ``local_epochs`` of its epochs (``iters_per_epoch`` steps each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from transmed.federated.privacy import DPSettings
from transmed.training.config import (
    ConfigError,
    TrainConfig,
    read_config_file,
    validation_message,
)
from transmed.training.schedule import lr_factor


def global_lr(train: TrainConfig, server_round: int, rounds: int, steps_per_round: int,
              local_step: int, peak_lr: float | None = None) -> float:  # fmt: skip
    """Learning rate of a site's ``local_step`` (0-based) in ``server_round`` (1-based).

    The federation follows ONE schedule, the trainer's (``train.schedule``, warm-up
    ``train.warmup_epochs`` epochs at the start of round 1), over ``rounds × steps_per_round``
    steps: a round continues where the previous one stopped, as a centralised run's epochs do.
    """
    total = max(1, rounds * steps_per_round)
    warmup = int(train.warmup_epochs * train.iters_per_epoch)
    step = min((server_round - 1) * steps_per_round + local_step, total - 1)
    peak = train.lr if peak_lr is None else peak_lr
    return float(peak * lr_factor(step, total, min(warmup, total - 1), train.schedule))


class FederatedConfig(BaseModel):
    """Everything a federation needs besides the sites' data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: TrainConfig = Field(default_factory=TrainConfig)
    rounds: int = Field(10, ge=1)
    local_epochs: int = Field(1, ge=1)  # trainer epochs per site per round
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    proximal_mu: float = Field(0.01, ge=0.0)  # FedProx μ (Li et al. 2020)
    # FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2, with Adam's
    # bias correction): the server treats Δ = weighted mean of the sites' weights − global as a
    # pseudo-gradient and steps global += η · m̂ / (√v̂ + τ) on the trainable parameters
    # (strategy.server_adam_step). The paper's grid for Adam-like sites: η 1e-2..1e-1, τ 1e-3.
    server_eta: float = Field(1e-2, gt=0.0, le=1.0)  # η, the server step (weights' units)
    server_tau: float = Field(1e-3, gt=0.0, le=1.0)  # τ: larger → less adaptive (FedAvgM-like)
    server_beta1: float = Field(0.9, ge=0.0, lt=1.0)  # first-moment decay
    server_beta2: float = Field(0.99, ge=0.0, lt=1.0)  # second-moment decay
    # "global": η follows the federation's one schedule (η · round_lr(r) / peak lr, as the
    # sites' rates do); "constant": the paper's fixed η
    server_eta_schedule: Literal["global", "constant"] = "global"
    # server step size η_g (Reddi et al. 2021, "Adaptive Federated Optimization"; Flower's
    # FedAvgM server_learning_rate): global += η_g · (weighted mean of the sites' weights −
    # global), on the trainable parameters. 1 is plain FedAvg/FedProx. With K sites each
    # taking k small SGD-like steps, the mean moves the model about k steps while the sites
    # spent K·k; η_g > 1 is the standard remedy. With AdamW at the sites it hurt in the study
    # (docs/federated.md: η_g 1.5 and 3 below plain FedAvg).
    server_lr: float = Field(1.0, gt=0.0, le=10.0)
    min_clients: int = Field(2, ge=1)  # sites needed to start a round
    fraction_fit: float = Field(1.0, gt=0.0, le=1.0)
    round_timeout_s: float | None = Field(None, gt=0.0)  # a site slower than this is dropped
    dp: DPSettings | None = None  # DP-SGD at every site (simulate); a real site sets its own
    # each site carries its AdamW moments over from its previous round (they never leave it)
    keep_optimizer_state: bool = True
    # "global": local steps follow the federation's one schedule (global_lr); "per_round": each
    # round is a fresh trainer schedule from round_lr decaying to 0 (the behaviour before
    # 2026-11-30, kept for the study's ablation)
    local_lr_schedule: Literal["global", "per_round"] = "global"
    # the sites' optimizer: the trainer's AdamW, or SGD with heavy-ball momentum (train.lr is
    # then SGD's rate; its momentum buffer carries over like AdamW's moments). Local SGD keeps
    # the sites' steps in the gradient's own scale, so their mean is one SGD-like move
    # (docs/federated.md: the AdamW-normalisation hypothesis)
    local_optimizer: Literal["adamw", "sgd"] = "adamw"
    local_momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD's momentum

    @field_validator("train", mode="after")
    @classmethod
    def _pin_model(cls, train: TrainConfig) -> TrainConfig:
        # the server, every site and the saved global checkpoint build the same model, and a
        # resumed federation rebuilds it even if a registry default changes (TrainConfig.pinned)
        return train.pinned()

    @model_validator(mode="after")
    def _one_server_step(self) -> FederatedConfig:
        if self.strategy == "fedadam" and self.server_lr != 1.0:
            raise ValueError(f"server_lr {self.server_lr} applies to fedavg/fedprox; FedAdam's "
                             "server step size is server_eta")  # fmt: skip
        if self.local_optimizer == "sgd" and self.local_lr_schedule != "global":
            raise ValueError("local_optimizer sgd takes its rates from the federation's global "
                             "schedule; set local_lr_schedule: global")  # fmt: skip
        return self

    def server_eta_at(self, server_round: int) -> float:
        """FedAdam's η in ``server_round`` (1-based)."""
        if self.server_eta_schedule == "constant":
            return self.server_eta
        return self.server_eta * self.round_lr(server_round) / self.train.lr

    def steps_per_round(self) -> int:
        return self.local_epochs * self.train.iters_per_epoch

    def round_lr(self, server_round: int) -> float:
        """Learning rate at the first local step of a round (:func:`global_lr`)."""
        return global_lr(self.train, server_round, self.rounds, self.steps_per_round(), 0)


def load_federated_config(path: str | Path | None = None, **overrides: Any) -> FederatedConfig:
    """Read a JSON/YAML federation config, apply ``overrides`` (``None`` ignored; a ``train``
    override dict is merged key by key)."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    train = dict(data.get("train") or {})
    train.update({k: v for k, v in (overrides.pop("train", None) or {}).items() if v is not None})
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["train"] = train
    try:
        return FederatedConfig(**data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid federation config: {validation_message(exc)}") from None
