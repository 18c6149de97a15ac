"""One site's local epochs, run by TransMed's own :class:`~transmed.training.trainer.Trainer`.

The trainer starts from the global weights (``init_state``) and, through its ``hooks``, gets
the federated additions, none of which is a training loop of its own:

- FedProx: an optimizer step pre-hook adds μ(w − w_global) to each gradient (after DP-SGD's
  clipping and noise: the proximal term uses no data, so it costs no privacy);
- DP-SGD: the model is wrapped for per-sample gradients, the optimizer by Opacus's
  ``DPOptimizer``, the loss is taken per sample (the trainer's batch Dice mixes samples, which
  per-sample clipping cannot bound), and each epoch's batches are Poisson samples of cases.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    (:meth:`wrap`, once per run) and each epoch's batches (:meth:`batches`)."""

    def __init__(self, global_state: dict[str, torch.Tensor], proximal_mu: float = 0.0,
                 dp: DPTraining | None = None) -> None:  # fmt: skip
        self.global_state = {k: v.detach().clone() for k, v in global_state.items()}
        self.mu = float(proximal_mu)
        self.dp = dp

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
             ) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:  # fmt: skip
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
    device: str = "cpu",
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Train ``config.epochs`` epochs from ``global_state`` on ``case_ids``.

    Returns the final weights (read back from the run's ``final.pt``) and the epoch history.
    """
    from transmed.training.trainer import Trainer, write_run_files

    split = {"train": sorted(case_ids), "val": []}
    write_run_files(run_dir, config, split, preprocessed)
    extra: dict[str, Any] = {}
    if proximal_mu > 0 or dp is not None:
        extra["hooks"] = FederatedHooks(global_state, proximal_mu, dp)
    trainer = Trainer(config, preprocessed, run_dir, split, device=device, progress=progress,
                      init_state=global_state, **extra)  # fmt: skip
    trainer.run()
    ckpt = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    return ckpt["model"], list(ckpt.get("history", []))
