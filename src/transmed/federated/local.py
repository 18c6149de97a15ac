"""One site's local epochs, run by TransMed's own :class:`~transmed.training.trainer.Trainer`.

The trainer starts from the global weights (``init_state``) and, through its ``hooks``, gets
the federated additions, none of which is a training loop of its own:

- the learning rate: an optimizer step pre-hook sets each local step's rate from the
  federation's global schedule (``lr_at``), so a round continues the schedule where the last one
  stopped instead of decaying to ~0 within every round (the trainer's own per-run schedule
  would: with 4 local steps its poly decay averages 0.65 of the round's rate and ends at 0.29);
- the optimizer: the trainer's AdamW, or SGD with momentum (``local_optimizer="sgd"``, the same
  parameters, rate and weight decay), whose steps keep the gradient's scale;
- the optimizer state: AdamW's moments and step count (SGD's momentum buffer) are carried over
  from the site's previous round (``optimizer_state``), instead of a fresh AdamW
  (bias-corrected, sign-like first steps) every round. They stay at the site: only weights
  are sent;
- FedProx: an optimizer step pre-hook adds μ(w − w_global) to each gradient (after DP-SGD's
  clipping and noise: the proximal term uses no data, so it costs no privacy);
- DP-SGD: the model is wrapped for per-sample gradients, the optimizer by Opacus's
  ``DPOptimizer``, the loss is taken per sample (the trainer's batch Dice mixes samples, which
  per-sample clipping cannot bound), and each epoch's batches are Poisson samples of cases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transmed.federated.privacy import DPTraining
from transmed.training.checkpoint import load_checkpoint
from transmed.training.config import TrainConfig


class PerSampleLoss(nn.Module):
    """The trainer's loss applied to each sample alone, averaged over the batch.

    DP-SGD bounds each sample's influence by clipping its gradient, which needs
    ``loss = mean_i loss(sample_i)``; a batch Dice couples the samples.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, out: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        b = target.shape[0]
        terms = []
        for i in range(b):
            oi = [o[i : i + 1] for o in out] if isinstance(out, (list, tuple)) else out[i : i + 1]
            terms.append(self.loss(oi, target[i : i + 1]))
        return torch.stack(terms).mean()


class FederatedHooks:
    """What the trainer lets a federated site change: the model/optimizer/loss it steps with
    (:meth:`wrap`, once per run) and each epoch's batches (:meth:`batches`).

    Args:
        global_state: the round's global weights (FedProx's anchor).
        proximal_mu: FedProx μ (0: FedAvg).
        dp: DP-SGD at this site, or None.
        lr_at: learning rate of the run's local step ``j`` (0-based); it overrides the trainer's
            per-run schedule (the trainer's ``lr`` column then shows its own, unused, value).
        optimizer_state: the site's optimizer ``state_dict`` from its previous round.
        local_optimizer: ``"adamw"`` keeps the trainer's optimizer; ``"sgd"`` replaces it by
            ``torch.optim.SGD`` with ``momentum`` (needs ``lr_at``: the trainer's scheduler
            drives the AdamW it built, not the replacement; PyTorch warns once per run that
            this scheduler's optimizer never stepped).
    """

    def __init__(self, global_state: dict[str, torch.Tensor], proximal_mu: float = 0.0,
                 dp: DPTraining | None = None, *, lr_at: Callable[[int], float] | None = None,
                 optimizer_state: dict[str, Any] | None = None, local_optimizer: str = "adamw",
                 momentum: float = 0.9) -> None:  # fmt: skip
        if local_optimizer not in ("adamw", "sgd"):
            raise ValueError(f"local optimizer {local_optimizer!r}: expected adamw or sgd")
        if local_optimizer == "sgd" and lr_at is None:
            raise ValueError("local optimizer sgd needs lr_at (the federation's schedule)")
        self.local_optimizer, self.momentum = local_optimizer, float(momentum)
        self.global_state = {k: v.detach().clone() for k, v in global_state.items()}
        self.mu = float(proximal_mu)
        self.dp = dp
        self.lr_at = lr_at
        self.optimizer_state = optimizer_state
        self.lrs: list[float] = []  # the rate of each local step taken (for the round's record)

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
             ) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:  # fmt: skip
        if self.local_optimizer == "sgd":
            group = optimizer.param_groups[0]
            # the trainer's weight decay, as SGD's (coupled) L2 term
            optimizer = torch.optim.SGD(model.parameters(), lr=group["lr"], momentum=self.momentum,
                                        weight_decay=group["weight_decay"])  # fmt: skip
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        if self.lr_at is not None:
            lr_at, lrs = self.lr_at, self.lrs

            def set_lr(opt: torch.optim.Optimizer, *_: Any) -> None:
                lr = float(lr_at(len(lrs)))
                lrs.append(lr)
                for group in opt.param_groups:
                    group["lr"] = lr

            # on the base optimizer: inside DPOptimizer.step it runs only for real steps
            optimizer.register_step_pre_hook(set_lr)
        if self.mu > 0:
            named = dict(model.named_parameters())
            anchors = [(named[k], v.to(named[k].device)) for k, v in self.global_state.items()
                       if k in named and named[k].requires_grad]  # fmt: skip
            mu = self.mu

            def proximal(opt: torch.optim.Optimizer, *_: Any) -> None:
                with torch.no_grad():
                    for p, w0 in anchors:
                        if p.grad is not None:
                            p.grad.add_(p - w0, alpha=mu)  # ∇ μ/2 ‖w − w_global‖²

            # on the base optimizer, so it also runs inside DPOptimizer.step after the noise
            optimizer.register_step_pre_hook(proximal)
        if self.dp is not None:
            model, optimizer = self.dp.wrap(model, optimizer)
            loss_fn = PerSampleLoss(loss_fn)
        return model, optimizer, loss_fn

    def batches(self, dataset: Any, loader: Iterable, epoch: int) -> Iterable:
        if self.dp is None:
            return loader
        base = getattr(dataset, "dataset", dataset)  # a Subset of the PatchDataset
        return self.dp.batches(base, len(loader), epoch)


def run_local_training(
    config: TrainConfig,
    preprocessed: Path,
    run_dir: Path,
    case_ids: list[str],
    global_state: dict[str, torch.Tensor],
    *,
    proximal_mu: float = 0.0,
    dp: DPTraining | None = None,
    lr_at: Callable[[int], float] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    local_optimizer: str = "adamw",
    local_momentum: float = 0.9,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]], dict[str, Any]]:
    """Train ``config.epochs`` epochs from ``global_state`` on ``case_ids``.

    Returns the final weights, the epoch history and the optimizer state (read back from the
    run's ``final.pt``).
    """
    from transmed.training.trainer import Trainer, write_run_files

    split = {"train": sorted(case_ids), "val": []}
    write_run_files(run_dir, config, split, preprocessed)
    hooks = FederatedHooks(global_state, proximal_mu, dp, lr_at=lr_at,
                           optimizer_state=optimizer_state, local_optimizer=local_optimizer,
                           momentum=local_momentum)  # fmt: skip
    trainer = Trainer(config, preprocessed, run_dir, split, device=device, progress=progress,
                      init_state=global_state, hooks=hooks)  # fmt: skip
    trainer.run()
    ckpt = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    return ckpt["model"], list(ckpt.get("history", [])), ckpt["optimizer"]
