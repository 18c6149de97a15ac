"""DP-SGD layer: exact per-sample gradients for TransMed's layers, Opacus clipping and noise,
privacy accounting, and DP parameters that cannot be met."""

from __future__ import annotations

import pytest
import torch

from transmed.federated.local import PerSampleLoss
from transmed.federated.privacy import (
    DPSettings,
    DPTraining,
    PerSampleGradModel,
    PrivacyError,
    epsilon_for,
    plan_privacy,
)
from transmed.models import create_model
from transmed.training.losses import RegionDiceBCELoss

TINY = dict(features=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,), axial_stages=(1,),
            attention_head_dim=8, patch_size=16, full_res_channels=4, num_kernels=2)  # fmt: skip


@pytest.mark.parametrize("name,norm", [("transmed_full", "instance"), ("transmed_full", "group"),
                                       ("unet", "instance")])  # fmt: skip
def test_per_sample_gradients_match_a_per_sample_loop(name: str, norm: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, norm=norm, **TINY).train()
    x = torch.randn(3, 4, 16, 16, 16)
    y = (torch.rand(3, 3, 16, 16, 16) > 0.7).float()
    loss_fn = PerSampleLoss(RegionDiceBCELoss())
    loss_fn(PerSampleGradModel(model)(x), y).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    batched = [p.grad_sample.clone() for p in params]
    assert all(g.shape == (3, *p.shape) for g, p in zip(batched, params, strict=True))
    for i in range(3):
        model.zero_grad()
        RegionDiceBCELoss()(model(x[i : i + 1]), y[i : i + 1]).backward()
        for p, g in zip(params, batched, strict=True):
            torch.testing.assert_close(g[i], p.grad, rtol=1e-4, atol=1e-6)
    # the relative position bias table and the dynamic kernels do get per-sample gradients
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if name == "transmed_full":
        tables = [g for n, g in zip(names, batched, strict=True) if n.endswith("bias.table")]
        assert tables and all(t.abs().sum() > 0 for t in tables)


def test_batch_dice_would_mix_samples_per_sample_loss_does_not() -> None:
    """Sample 0's gradient must not depend on sample 1 (else clipping bounds nothing)."""
    torch.manual_seed(0)
    model = create_model("unet", **{k: v for k, v in TINY.items()
                                    if k in ("features", "encoder_blocks", "decoder_blocks")})
    x = torch.randn(2, 4, 16, 16, 16)
    y = (torch.rand(2, 3, 16, 16, 16) > 0.7).float()

    def grad0(loss_fn, y1):
        model.zero_grad()
        yy = y.clone()
        yy[1] = y1
        loss_fn(PerSampleGradModel(model)(x), yy).backward()
        return next(iter(model.parameters())).grad_sample[0].clone()

    per_sample = PerSampleLoss(RegionDiceBCELoss())
    torch.testing.assert_close(grad0(per_sample, y[1]), grad0(per_sample, 1 - y[1]))
    batch = RegionDiceBCELoss()  # batch Dice: sums over the batch before the ratio
    assert not torch.allclose(grad0(batch, y[1]), grad0(batch, 1 - y[1]))


def test_dp_step_clips_each_sample_and_adds_calibrated_noise() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1, bias=False)
    lin.weight.data.zero_()
    plan = plan_privacy(DPSettings(noise_multiplier=1e-9, delta=1e-5), 20, 2, 10)
    dp = DPTraining(plan, max_grad_norm=1.0, batch_size=2)
    model, opt = dp.wrap(lin, torch.optim.SGD(lin.parameters(), lr=1.0))
    x = torch.tensor([[100.0, 0, 0], [0, 0.1, 0]])
    model(x).sum().backward()  # per-sample grads (100,0,0) and (0,0.1,0), loss = sum
    # Opacus's "mean" reduction: per-sample grads are B·∂(mean)/∂w; sum() → scaled by 2
    opt.step()
    # clipped to norm 1: (1,0,0) and (0,0.2,0)·... averaged over the expected batch 2
    w = -lin.weight.data[0]
    assert w[0].item() == pytest.approx(0.5, abs=1e-4)  # clipped from 200 to 1, then / 2
    assert w[1].item() == pytest.approx(0.2 / 2, abs=1e-4)  # 0.2 < 1: not clipped
    assert dp.steps_taken == 1 and dp.epsilon() > 0
    # an empty Poisson sample still takes a (noise-only) step, and is accounted
    dp._noise_step()
    assert dp.steps_taken == 2


def test_noise_is_added_with_the_planned_sd() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(4000, 1, bias=False)
    lin.weight.data.zero_()
    plan = plan_privacy(DPSettings(noise_multiplier=2.0, delta=1e-5), 100, 4, 10)
    dp = DPTraining(plan, max_grad_norm=0.5, batch_size=4)
    _, opt = dp.wrap(lin, torch.optim.SGD(lin.parameters(), lr=1.0))
    dp._noise_step()  # zero gradient: what moves is the noise, sd σ·C / expected batch
    assert lin.weight.data.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.08)


def test_plans_that_cannot_be_met_are_refused_with_the_reason() -> None:
    with pytest.raises(PrivacyError, match="too small for 1000 steps"):
        plan_privacy(DPSettings(epsilon=0.05, delta=1e-5), 50, 4, 1000)
    with pytest.raises(PrivacyError, match="not below 1/n"):
        plan_privacy(DPSettings(epsilon=8, delta=0.2), 10, 2, 10)
    with pytest.raises(PrivacyError, match="sampling rate 1"):
        plan_privacy(DPSettings(epsilon=8), 4, 4, 10)
    with pytest.raises(PrivacyError, match="spends"):
        plan_privacy(DPSettings(epsilon=1.0, noise_multiplier=0.3), 100, 4, 200)
    with pytest.raises(ValueError, match="--dp-epsilon or --dp-noise"):
        DPSettings()


def test_calibrated_noise_meets_epsilon() -> None:
    plan = plan_privacy(DPSettings(epsilon=2.0, delta=1e-5), 40, 4, 120)
    assert plan.epsilon_planned <= 2.0
    assert plan.epsilon_planned > 1.9  # calibrated, not wildly over-noised
    assert epsilon_for(plan.noise_multiplier, 0.1, 240, 1e-5) > plan.epsilon_planned


def test_fedprox_hook_pulls_towards_the_global_weights() -> None:
    from transmed.federated.local import FederatedHooks

    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(-1.0)
    global_state = {k: torch.zeros_like(v) for k, v in lin.state_dict().items()}
    hooks = FederatedHooks(global_state, proximal_mu=0.5)
    model, opt, _ = hooks.wrap(lin, torch.optim.SGD(lin.parameters(), lr=1.0), torch.nn.MSELoss())
    (0.0 * model(torch.ones(1, 2)).sum()).backward()  # no data gradient: only the prox term
    opt.step()
    torch.testing.assert_close(lin.weight.data, torch.full((1, 2), 0.5))  # 1 − 0.5·(1 − 0)
    torch.testing.assert_close(lin.bias.data, torch.full((1,), -0.5))
