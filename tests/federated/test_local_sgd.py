"""Local SGD at the sites (``local_optimizer: sgd``): the trainer's AdamW is replaced by SGD
with momentum, its steps follow the federation's schedule, and its momentum carries over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transmed.federated.client import SiteTrainer
from transmed.federated.config import FederatedConfig, load_federated_config
from transmed.federated.local import FederatedHooks
from transmed.federated.params import get_weights
from transmed.federated.strategy import FederationState
from transmed.training.config import ConfigError


def test_hooks_replace_adamw_by_momentum_sgd_with_the_schedule_rates() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    adamw = torch.optim.AdamW(model.parameters(), lr=0.5, weight_decay=0.0)
    rates = [0.1, 0.2]
    hooks = FederatedHooks(model.state_dict(), lr_at=lambda j: rates[j], local_optimizer="sgd",
                           momentum=0.5)  # fmt: skip
    _, opt, _ = hooks.wrap(model, adamw, torch.nn.MSELoss())
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.5
    for _ in range(2):
        opt.zero_grad()
        (2.0 * model.weight).sum().backward()  # gradient 2
        opt.step()
    # step 1: buffer 2, w = 1 − 0.1·2 = 0.8; step 2: buffer 0.5·2 + 2 = 3, w = 0.8 − 0.2·3 = 0.2
    assert model.weight.item() == pytest.approx(0.2)
    assert hooks.lrs == [0.1, 0.2]
    keep = FederatedHooks(model.state_dict(), lr_at=lambda j: 0.1)
    assert keep.wrap(model, adamw, torch.nn.MSELoss())[1] is adamw  # AdamW stays by default
    with pytest.raises(ValueError, match="needs lr_at"):
        FederatedHooks(model.state_dict(), local_optimizer="sgd")
    with pytest.raises(ValueError, match="expected adamw or sgd"):
        FederatedHooks(model.state_dict(), lr_at=lambda j: 0.1, local_optimizer="adam")


def test_bad_local_optimizer_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="local_optimizer"):
        load_federated_config(None, local_optimizer="lion")
    with pytest.raises(ConfigError, match="local_momentum"):
        load_federated_config(None, local_optimizer="sgd", local_momentum=1.0)
    with pytest.raises(ConfigError, match="global schedule"):
        load_federated_config(None, local_optimizer="sgd", local_lr_schedule="per_round")


def test_site_trains_with_sgd_and_keeps_its_momentum(tiny_sites, tiny_train, tmp_path: Path):
    fed = FederatedConfig(train={**tiny_train, "lr": 0.05, "warmup_epochs": 0.0}, rounds=2,
                          local_optimizer="sgd", local_momentum=0.9)  # fmt: skip
    site = SiteTrainer(tiny_sites["A"], tmp_path / "a", fed.train, rounds=2,
                       local_optimizer=fed.local_optimizer, local_momentum=fed.local_momentum)
    server = FederationState(fed, tmp_path / "srv")
    w0 = get_weights(server.model)
    cfg = {"fingerprint": server.fingerprint, "rounds": 2, "lr_peak": 0.05}
    w1, metrics = site.fit(w0, {**cfg, "round": 1})
    assert metrics["local_steps"] == 2 and np.isfinite(metrics["train_loss"])
    state = site.optimizer_state["state"]
    assert state and all("momentum_buffer" in s and "exp_avg" not in s for s in state.values())
    assert site.optimizer_state["param_groups"][0]["momentum"] == 0.9
    assert any(not np.allclose(a, b) for a, b in zip(w0, w1, strict=True))
    with pytest.raises(ValueError, match="global learning-rate schedule"):
        SiteTrainer(tiny_sites["A"], tmp_path / "b", fed.train, rounds=2,
                    local_optimizer="sgd", local_lr_schedule="per_round")
