"""Differential privacy for a site's local training: DP-SGD with Opacus, patient-level.

What is protected: one **case** (a patient) of a site. Each DP-SGD step Poisson-samples cases
(every case independently with probability q = batch / n_cases, Opacus's
``UniformWithReplacementSampler``), takes ONE random augmented patch per sampled case, clips
each sample's gradient to ``max_grad_norm``, adds Gaussian noise of sd
``noise_multiplier · max_grad_norm`` to the sum and divides by the expected batch (Opacus's
``DPOptimizer``). The privacy spent is accounted with Opacus's RDP accountant and reported as ε
at the given δ (Abadi et al. 2016; Mironov 2017).

Per-sample gradients. Opacus's hook and per-layer functorch paths need every parameter's
output to carry the batch: TransMed's relative position bias (one (heads, L, L) table shared by
all samples of the batch) does not, so they cannot split it per sample. :class:`PerSampleGradModel`
instead runs the WHOLE model under ``torch.func.vmap`` with the parameters expanded along the
batch: sample i only sees its own copy, so the gradient w.r.t. copy i is exactly sample i's
gradient, for any layer (instance/group norm, axial attention, dynamic convolution, transposed
convolution). Checked against a per-sample loop in ``tests/federated/test_privacy.py``.

Empty Poisson batches. A Poisson sample can be empty. Skipping that step would reveal that the
batch was empty (it depends on the data set's size), so :class:`PoissonBatches` takes the step
with zero clipped gradients plus noise, as DP-SGD prescribes, and does not hand the empty batch
to the trainer (the models refuse empty inputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transmed.training.data import PatchDataset


class PrivacyError(ValueError):
    """DP parameters that cannot be met, or a privacy budget that is spent."""


class DPSettings(BaseModel):
    """A site's DP-SGD settings (``--dp-epsilon``, ``--dp-delta``, ``--dp-clip``, ``--dp-noise``).

    Give ``epsilon`` (the noise multiplier is then calibrated for the planned steps) or
    ``noise_multiplier`` (ε is then only reported), or both (the noise must then meet ε).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float | None = Field(None, gt=0.0)  # target ε over the whole federation
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, gt=0.0)  # per-sample clipping bound C
    noise_multiplier: float | None = Field(None, gt=0.0)  # σ (noise sd = σ·C)
    max_noise_multiplier: float = Field(20.0, gt=0.0)  # refuse plans needing more noise

    @model_validator(mode="after")
    def _one_of(self) -> DPSettings:
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError("DP needs --dp-epsilon or --dp-noise (noise multiplier)")
        return self


@dataclass(frozen=True)
class PrivacyPlan:
    """The noise and sampling a site will use, fixed before the first step."""

    noise_multiplier: float
    sample_rate: float  # q = batch / n_cases
    steps: int  # planned DP-SGD steps over all rounds
    delta: float
    epsilon_planned: float  # ε after all planned steps

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε at ``delta`` after ``steps`` Poisson-subsampled Gaussian steps (Opacus RDP)."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


def plan_privacy(settings: DPSettings, n_cases: int, batch_size: int, steps: int) -> PrivacyPlan:
    """Calibrate (or check) the noise for ``steps`` DP-SGD steps; refuse what cannot be met.

    Raises:
        PrivacyError: with the reason: δ not below 1/n_cases, a batch larger than the site,
            ε unreachable within ``max_noise_multiplier``, or a given σ that overspends ε.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if n_cases < 2:
        raise PrivacyError(f"DP needs at least 2 cases at a site, got {n_cases}")
    if settings.delta >= 1.0 / n_cases:
        raise PrivacyError(
            f"δ={settings.delta:g} is not below 1/n = {1.0 / n_cases:.3g} ({n_cases} cases): "
            "such a δ allows releasing a whole case; use a smaller --dp-delta"
        )
    if batch_size >= n_cases:
        raise PrivacyError(
            f"expected batch {batch_size} ≥ {n_cases} cases: sampling rate 1 gives no "
            "amplification by subsampling; use a smaller batch size"
        )
    if steps < 1:
        raise PrivacyError(f"no DP-SGD step planned (steps={steps})")
    q = batch_size / n_cases
    sigma = settings.noise_multiplier
    if settings.epsilon is not None:
        try:
            needed = get_noise_multiplier(target_epsilon=settings.epsilon,
                                          target_delta=settings.delta, sample_rate=q, steps=steps)
        except ValueError:
            needed = math.inf
        if needed > settings.max_noise_multiplier:
            raise PrivacyError(
                f"ε={settings.epsilon:g} at δ={settings.delta:g} is too small for {steps} "
                f"steps at sampling rate {q:.3g}: it needs a noise multiplier of "
                f"{needed:.3g} > {settings.max_noise_multiplier:g} (the update would be "
                "noise); allow a larger ε, fewer rounds/steps or a smaller batch"
            )
        if sigma is None:
            sigma = needed
        elif sigma < needed:
            eps = epsilon_for(sigma, q, steps, settings.delta)
            raise PrivacyError(
                f"noise multiplier {sigma:g} spends ε={eps:.3g} over {steps} steps, more than "
                f"--dp-epsilon {settings.epsilon:g}; it needs ≥ {needed:.3g}"
            )
    if sigma is None:  # DPSettings' validator asks for epsilon or a noise multiplier
        raise PrivacyError("differential privacy needs --dp-epsilon or --dp-noise")
    eps_plan = epsilon_for(sigma, q, steps, settings.delta)
    return PrivacyPlan(float(sigma), q, int(steps), settings.delta, eps_plan)


class PerSampleGradModel(nn.Module):
    """Wrap ``model`` so that a backward pass leaves ``p.grad_sample`` (B, *p.shape) on each
    trainable parameter: the gradient of each sample's own loss, for a loss that is the mean
    of per-sample losses over the batch (Opacus's ``loss_reduction="mean"``).

    Shape: (B, C, D, H, W) → the wrapped model's output. Only for training; the wrapped model
    itself is what is evaluated and saved (it holds the same parameters).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        from torch.func import functional_call
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = dict(self.model.named_parameters())
        b = x.shape[0]
        expanded = []
        for n in names:
            p = params[n]
            e = p.unsqueeze(0).expand(b, *p.shape)  # (B, *p.shape), one copy per sample
            if torch.is_grad_enabled():
                e.register_hook(_grad_sample_hook(p, b))
            expanded.append(e)
        frozen = {n: p for n, p in params.items() if n not in set(names)}

        def one(ps: list[torch.Tensor], xi: torch.Tensor) -> Any:
            out = functional_call(self.model, {**frozen, **dict(zip(names, ps, strict=True))},
                                  (xi.unsqueeze(0),))  # fmt: skip
            if isinstance(out, (list, tuple)):
                return [o.squeeze(0) for o in out]
            return out.squeeze(0)

        # vmap cannot change memory formats: the channels-last layout switch (a CPU speed
        # choice, same arithmetic) is off while the per-sample forward runs.
        layouts = [m for m in self.model.modules() if getattr(m, "channels_last", False) is True]
        for m in layouts:
            m.channels_last = False
        try:
            # The fused CPU attention kernel has no gradient for a batched additive mask (the
            # relative position bias under vmap); the math kernel has.
            with sdpa_kernel(SDPBackend.MATH):
                return torch.func.vmap(one, in_dims=(0, 0))(expanded, x)
        finally:
            for m in layouts:
                m.channels_last = True


def _grad_sample_hook(p: torch.Tensor, batch: int) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        # d(mean_i l_i)/d(copy_i) = (1/B) dl_i/dθ: scale back to the per-sample gradient
        p.grad_sample = grad.detach() * batch  # type: ignore[attr-defined]

    return hook


class CasePatchDataset(Dataset):
    """One record per case: item ``i`` is one random augmented patch of case ``i``.

    The DP unit is the case, so a Poisson-sampled batch holds at most one patch per case.
    Each access draws a fresh patch (``(seed, epoch, i, draw)`` seeds it).
    """

    def __init__(self, patches: PatchDataset) -> None:
        self.epoch = 0
        self._draws: dict[int, int] = {}
        self.cases = [
            PatchDataset([path], patches.patch_size, 1, patches.foreground_prob,
                         patches.augment_config,
                         seed=int(np.random.SeedSequence([patches.seed, i]).generate_state(1)[0]))
            for i, path in enumerate(patches.paths)
        ]  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._draws = int(epoch), {}
        for ds in self.cases:
            ds.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k = self._draws.get(index, 0)  # the k-th draw of this case in this epoch
        self._draws[index] = k + 1
        return self.cases[index][k]


class PoissonBatches:
    """An epoch of ``steps`` Poisson-sampled batches of a :class:`CasePatchDataset`.

    Empty samples are not yielded: ``noise_step()`` takes the DP step (noise only) instead.
    """

    def __init__(self, dataset: CasePatchDataset, sample_rate: float, steps: int,
                 noise_step: Callable[[], None], seed: int) -> None:  # fmt: skip
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        self.dataset = dataset
        self.steps = steps
        self.noise_step = noise_step
        self.empty_steps = 0
        gen = torch.Generator().manual_seed(seed)
        self.sampler = UniformWithReplacementSampler(
            num_samples=len(dataset), sample_rate=sample_rate, generator=gen, steps=steps
        )

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=0,
                            collate_fn=_collate)  # fmt: skip
        for batch in loader:
            if batch is None:
                self.empty_steps += 1
                self.noise_step()
                continue
            yield batch


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    if not items:
        return None
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class DPTraining:
    """Turns a trainer's model, optimizer and data into DP-SGD ones, and keeps the books.

    One instance per site for the whole federation: its accountant spans all rounds.
    """

    def __init__(self, plan: PrivacyPlan, max_grad_norm: float, batch_size: int,
                 seed: int = 0) -> None:  # fmt: skip
        from opacus.accountants import RDPAccountant

        self.plan = plan
        self.max_grad_norm = max_grad_norm
        self.batch_size = batch_size
        self.seed = seed
        self.accountant = RDPAccountant()
        self.steps_taken = 0
        self.empty_steps = 0

    def epsilon(self) -> float:
        """ε spent so far at the plan's δ."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(self.plan.delta))

    def remaining_steps(self) -> int:
        return self.plan.steps - self.steps_taken

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer,
             ) -> tuple[nn.Module, torch.optim.Optimizer]:  # fmt: skip
        """The per-sample-gradient model and Opacus's DP optimizer around ``optimizer``."""
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise PrivacyError(f"model not compatible with DP-SGD: {errors[0]}")
        dp_opt = DPOptimizer(optimizer, noise_multiplier=self.plan.noise_multiplier,
                             max_grad_norm=self.max_grad_norm,
                             expected_batch_size=self.batch_size,
                             loss_reduction="mean")  # fmt: skip
        dp_opt.attach_step_hook(self._on_step)
        self._optimizer = dp_opt
        return PerSampleGradModel(model), dp_opt

    def _on_step(self, optimizer: Any) -> None:
        if self.steps_taken >= self.plan.steps:
            raise PrivacyError(
                f"privacy budget spent: {self.plan.steps} planned DP-SGD steps were taken "
                f"(ε={self.epsilon():.3g} at δ={self.plan.delta:g})"
            )
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier,
                             sample_rate=self.plan.sample_rate)  # fmt: skip
        self.steps_taken += 1

    def _noise_step(self) -> None:
        """The DP-SGD step of an empty Poisson sample: no data, only noise."""
        opt = self._optimizer
        opt.zero_grad(set_to_none=True)
        for p in opt.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        opt.step()
        self.empty_steps += 1

    def batches(self, patches: PatchDataset, steps: int, epoch: int) -> PoissonBatches:
        """One epoch of ``steps`` Poisson batches over the cases behind ``patches``."""
        ds = CasePatchDataset(patches)
        ds.set_epoch(epoch)
        seed = int(np.random.SeedSequence([self.seed, self.steps_taken, epoch])
                   .generate_state(1)[0])  # fmt: skip
        return PoissonBatches(ds, self.plan.sample_rate, steps, self._noise_step, seed)
