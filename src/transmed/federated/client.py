"""A hospital's side of the federation: local rounds with TransMed's own trainer.

Each round the site loads the global weights, runs ``local_epochs`` epochs of
:class:`transmed.training.trainer.Trainer` (same loss, augmentation, checkpoints: there is no
second training loop) from them, and returns the new weights. With DP the trainer's model and
optimizer are wrapped for DP-SGD (:mod:`transmed.federated.privacy`) and ε is reported each
round. FedProx adds μ(w − w_global) to the gradient before each optimizer step. The local steps
follow the federation's one learning-rate schedule (:func:`~transmed.federated.config.global_lr`)
and, by default, AdamW's state carries over from the site's previous round
(:mod:`transmed.federated.local`).

What leaves the site (:meth:`TransMedClient.fit`): the weights, the number of training cases
(FedAvg's weight), and numeric metrics (mean loss, steps, ε, the model fingerprint and the
round's authentication tag). No image, label, path or case identifier.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transmed.federated.params import (
    ModelMismatchError,
    config_difference,
    get_weights,
    model_fingerprint,
    set_weights,
    sign_update,
)
from transmed.federated.privacy import DPSettings, DPTraining, PrivacyError, plan_privacy
from transmed.models.layers import temperature_schedule
from transmed.training.config import TrainConfig

log = logging.getLogger("transmed.federated")


class SiteDataError(ValueError):
    """A site's dataset is missing, empty or unreadable."""


def load_site_data(data: Path, cache: Path, progress: bool = False) -> tuple[Path, list[str]]:
    """The site's preprocessed folder and labelled case ids (any layout TransMed reads)."""
    from transmed.training.run import prepare_data

    data = Path(data)
    if not data.is_dir():
        raise SiteDataError(f"{data}: site data folder not found")
    try:
        folder, ids = prepare_data(data, cache, progress=progress)
    except (ValueError, OSError) as exc:
        raise SiteDataError(f"{data}: the site's dataset cannot be used ({exc})") from None
    if not ids:
        raise SiteDataError(f"{data}: no labelled case to train on")
    return folder, ids


class SiteTrainer:
    """Local training of one site over the rounds of a federation.

    Args:
        data: the site's dataset (raw, any supported layout, or preprocessed).
        work_dir: the site's own folder (preprocessing cache, the current round's run).
        train: the site's TrainConfig (its model must match the server's).
        rounds: rounds the site plans to take part in (DP calibrates its noise for them).
        local_epochs: trainer epochs per round.
        dp: DP-SGD settings, or None.
        keep_optimizer_state: carry AdamW's state from one round to the next (in memory: a
            restarted site starts a fresh AdamW).
        local_optimizer: ``"adamw"`` (the trainer's) or ``"sgd"`` (momentum ``local_momentum``;
            needs the global schedule).
    """

    def __init__(self, data: Path, work_dir: Path, train: TrainConfig, *, rounds: int,
                 local_epochs: int = 1, dp: DPSettings | None = None, seed: int = 0,
                 device: str = "cpu", progress: bool = False,
                 keep_optimizer_state: bool = True,
                 local_lr_schedule: str = "global", local_optimizer: str = "adamw",
                 local_momentum: float = 0.9) -> None:  # fmt: skip
        from transmed.models import create_model

        if local_optimizer not in ("adamw", "sgd"):
            raise ValueError(f"local optimizer {local_optimizer!r}: expected adamw or sgd")
        if local_optimizer == "sgd" and local_lr_schedule != "global":
            raise ValueError("local optimizer sgd needs the global learning-rate schedule")
        self.local_optimizer, self.local_momentum = local_optimizer, float(local_momentum)

        self.keep_optimizer_state = keep_optimizer_state
        self.global_schedule = local_lr_schedule == "global"
        self.optimizer_state: dict[str, Any] | None = None
        self.rounds = rounds
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.folder, self.case_ids = load_site_data(Path(data), self.work_dir / "preprocessed")
        self.train = train
        self.local_epochs = local_epochs
        self.seed = seed
        self.device = device
        self.progress = progress
        kwargs = dict(train.model_kwargs)
        if train.deep_supervision:
            kwargs["deep_supervision"] = True
        self.model = create_model(train.model, **kwargs)
        self.fingerprint = model_fingerprint(self.model)
        self.dp: DPTraining | None = None
        if dp is not None:
            steps = rounds * local_epochs * train.iters_per_epoch
            plan = plan_privacy(dp, len(self.case_ids), train.batch_size, steps)
            self.dp = DPTraining(plan, dp.max_grad_norm, train.batch_size, seed=seed)
            self._restore_ledger()

    def _restore_ledger(self) -> None:
        """Privacy already spent by this site in earlier runs (a restarted client) counts."""
        import json

        path = self.work_dir / "privacy_ledger.json"
        if self.dp is None or not path.is_file():
            return
        led = json.loads(path.read_text())
        if led.get("plan") != self.dp.plan.as_dict():
            raise PrivacyError(
                f"{path}: this site already spent privacy under another DP plan "
                f"({led.get('plan')}); keep the plan or use a new work folder only if the "
                "data are new"
            )
        self.dp.steps_taken = int(led["steps_taken"])
        self.dp.accountant.history = [tuple(h) for h in led["history"]]

    def _save_ledger(self) -> None:
        import json

        from transmed.io.atomic import atomic_write_text

        if self.dp is not None:
            atomic_write_text(self.work_dir / "privacy_ledger.json", json.dumps({
                "plan": self.dp.plan.as_dict(), "steps_taken": self.dp.steps_taken,
                "history": [list(h) for h in self.dp.accountant.history],
                "epsilon": self.dp.epsilon(),
            }))  # fmt: skip

    @property
    def num_examples(self) -> int:
        return len(self.case_ids)

    def check_model(self, fingerprint: str, server_config: dict[str, Any] | None) -> None:
        """Refuse a server whose model differs from this site's (message names the keys)."""
        if fingerprint != self.fingerprint:
            diff = config_difference(self.model.config, server_config or {})
            raise ModelMismatchError(
                f"this site's model ({self.train.model}) differs from the server's: {diff}"
            )

    def round_config(self, cfg: dict[str, Any]) -> TrainConfig:
        """This round's TrainConfig: the peak lr (the steps' rates come from :meth:`lr_at`),
        no per-run warm-up, the global position of the dynamic-convolution temperature
        schedule, a seed of its own, no validation."""
        r = int(cfg["round"])
        e0 = (r - 1) * self.local_epochs
        t = self.train
        start = temperature_schedule(e0, t.temperature_epochs, t.temperature_start,
                                     t.temperature_end)  # fmt: skip
        end = temperature_schedule(e0 + self.local_epochs, t.temperature_epochs,
                                   t.temperature_start, t.temperature_end)  # fmt: skip
        return t.model_copy(update={
            "epochs": self.local_epochs,
            "lr": float(cfg.get("lr_peak", t.lr) if self.global_schedule else cfg.get("lr", t.lr)),
            "warmup_epochs": 0.0,
            "temperature_start": start, "temperature_end": end,
            "temperature_epochs": float(self.local_epochs) if start != end else 0.0,
            "val_fraction": 0.0, "seed": self.seed * 100_003 + r, "num_workers": 0,
            # DP-SGD's clipping and noise are calibrated in fp32
            **({"precision": "fp32"} if self.dp is not None else {}),
        })  # fmt: skip

    def lr_at(self, cfg: dict[str, Any]) -> Callable[[int], float]:
        """The round's local step → learning rate, on the federation's one schedule."""
        from transmed.federated.config import global_lr

        r, rounds = int(cfg["round"]), int(cfg.get("rounds", self.rounds))
        k = self.local_epochs * self.train.iters_per_epoch
        peak = float(cfg.get("lr_peak", self.train.lr))
        return lambda j: global_lr(self.train, r, rounds, k, j, peak)

    def fit(self, weights: list[np.ndarray], cfg: dict[str, Any],
            ) -> tuple[list[np.ndarray], dict[str, Any]]:  # fmt: skip
        """One round of local training from ``weights``; returns new weights and metrics."""
        from transmed.federated.local import run_local_training

        self.check_model(str(cfg.get("fingerprint", "")), _json(cfg.get("model_config")))
        set_weights(self.model, weights)
        if self.dp is not None:
            needed = self.local_epochs * self.train.iters_per_epoch
            if needed > self.dp.remaining_steps():
                raise PrivacyError(
                    f"round {cfg['round']} needs {needed} DP-SGD steps but only "
                    f"{self.dp.remaining_steps()} remain in this site's privacy budget "
                    f"(ε={self.dp.epsilon():.3g} spent)"
                )
        config = self.round_config(cfg)
        run_dir = self.work_dir / "rounds" / f"round_{int(cfg['round']):04d}"
        if run_dir.exists():  # a retried round starts over
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        mu = float(cfg.get("proximal_mu", 0.0))
        new_state, history, opt_state = run_local_training(
            config, self.folder, run_dir, self.case_ids, self.model.state_dict(),
            proximal_mu=mu, dp=self.dp, lr_at=self.lr_at(cfg) if self.global_schedule else None,
            optimizer_state=self.optimizer_state, device=self.device, progress=self.progress,
            local_optimizer=self.local_optimizer, local_momentum=self.local_momentum,
        )  # fmt: skip
        if self.keep_optimizer_state:
            self.optimizer_state = opt_state
        self._save_ledger()  # before anything leaves the site
        self.model.load_state_dict(new_state)
        for old in sorted((self.work_dir / "rounds").glob("round_*")):
            if old != run_dir:  # keep only the latest round's run folder
                shutil.rmtree(old, ignore_errors=True)
        losses = [float(h["train_loss"]) for h in history
                  if np.isfinite(h.get("train_loss", np.nan))]  # fmt: skip
        metrics: dict[str, Any] = {
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "local_steps": int(config.epochs * config.iters_per_epoch),
            "fit_time_s": float(time.perf_counter() - t0),
            "fingerprint": self.fingerprint,
        }
        if self.dp is not None:
            metrics.update({"dp_epsilon": self.dp.epsilon(), "dp_delta": self.dp.plan.delta,
                            "dp_noise_multiplier": self.dp.plan.noise_multiplier,
                            "dp_steps": self.dp.steps_taken})  # fmt: skip
        return get_weights(self.model), metrics


def _json(value: Any) -> dict[str, Any] | None:
    import json

    if isinstance(value, str) and value:
        try:
            out = json.loads(value)
            return out if isinstance(out, dict) else None
        except json.JSONDecodeError:
            return None
    return None


def make_numpy_client(site: SiteTrainer, token: str | None = None) -> Any:
    """A Flower ``NumPyClient`` around a :class:`SiteTrainer`."""
    from flwr.client import NumPyClient

    class TransMedClient(NumPyClient):
        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            return get_weights(site.model)

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any],
                ) -> tuple[list[np.ndarray], int, dict[str, Any]]:  # fmt: skip
            weights, metrics = site.fit(parameters, config)
            if token is not None:
                metrics["auth"] = sign_update(token, str(config.get("nonce", "")),
                                              site.fingerprint)  # fmt: skip
            log.info("round %s: trained %d steps, loss %.4f%s", config.get("round"),
                     metrics["local_steps"], metrics["train_loss"],
                     f", ε={metrics['dp_epsilon']:.3f}" if "dp_epsilon" in metrics else "")
            return weights, site.num_examples, metrics

    return TransMedClient()


def torch_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
