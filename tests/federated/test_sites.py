"""Sites through TransMed's trainer: simulate end to end, bad data, foreign models, DP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from transmed.federated.client import SiteDataError, SiteTrainer
from transmed.federated.config import FederatedConfig
from transmed.federated.params import ModelMismatchError, get_weights
from transmed.federated.run import build_sites, simulate
from transmed.federated.sites import SiteProfile, apply_site_protocol
from transmed.training.checkpoint import load_checkpoint


def test_simulate_fedavg_trains_through_the_trainer(tiny_sites, tiny_train, tmp_path: Path):
    cfg = FederatedConfig(train=tiny_train, rounds=2, min_clients=2)
    sites = {k: v for k, v in tiny_sites.items() if k != "test"}
    wire: list = []
    state = simulate(cfg, sites, tmp_path / "fed", test_data=tiny_sites["test"], wire=wire)
    assert state.rounds_done == 2
    # what crossed the wire: no case id, file name or folder of any site, numbers only
    assert len(wire) == 8  # 2 rounds × 2 sites × (instructions down, update up)
    for _, _, payload in wire:
        assert b"BraTS2021" not in payload and b".nii" not in payload
        assert str(tmp_path).encode() not in payload and b"/tmp" not in payload
    from flwr.common import serde
    from flwr.proto.transport_pb2 import ClientMessage

    msg = ClientMessage.FitRes()
    msg.ParseFromString(next(p for _, d, p in wire if d == "site->server"))
    res = serde.fit_res_from_proto(msg)
    assert all(isinstance(v, (int, float)) for k, v in res.metrics.items() if k != "fingerprint")
    rec = json.loads((tmp_path / "fed" / "rounds.json").read_text())
    assert [r["sites"] for r in rec] == [["A", "B"], ["A", "B"]]
    assert all(0.0 <= r["eval"]["dice_mean"] <= 1.0 for r in rec)
    assert rec[0]["site_metrics"]["A"]["local_steps"] == 2
    # each site's round is a TransMed trainer run: its own checkpoint and metrics
    run = tmp_path / "fed" / "sites" / "A" / "rounds" / "round_0002"
    assert (run / "checkpoints" / "final.pt").is_file() and (run / "metrics.csv").is_file()
    assert not (tmp_path / "fed" / "sites" / "A" / "rounds" / "round_0001").exists()
    g = load_checkpoint(tmp_path / "fed" / "checkpoints" / "global.pt")
    a = load_checkpoint(run / "checkpoints" / "final.pt")["model"]
    assert any(not np.allclose(g["model"][k].numpy(), a[k].numpy()) for k in a)  # averaged


def test_site_with_another_model_is_refused_clearly(tiny_sites, tiny_train, tmp_path: Path):
    cfg = FederatedConfig(train=tiny_train, rounds=1, min_clients=1)
    other = {**tiny_train, "model_kwargs": {**tiny_train["model_kwargs"], "features": [4, 12]}}
    site = SiteTrainer(tiny_sites["B"], tmp_path / "b", FederatedConfig(train=other).train,
                       rounds=1)  # fmt: skip
    from transmed.federated.strategy import FederationState

    server = FederationState(cfg, tmp_path / "srv")
    want = r"kwargs.features: here \[4, 12\], server \[4, 8\]"
    with pytest.raises(ModelMismatchError, match=want):
        site.fit(get_weights(server.model), {"round": 1, "fingerprint": server.fingerprint,
                                             "model_config": json.dumps(server.model.config)})


def test_empty_or_unreadable_site_leaves_cleanly(tiny_sites, tiny_train, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken" / "BraTS2021_00000"
    broken.mkdir(parents=True)
    for mod in ("t1", "t1ce", "t2", "flair", "seg"):
        (broken / f"BraTS2021_00000_{mod}.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(SiteDataError, match="empty"):
        SiteTrainer(empty, tmp_path / "w1", FederatedConfig(train=tiny_train).train, rounds=1)
    cfg = FederatedConfig(train=tiny_train, rounds=1, min_clients=1)
    clients, refused = build_sites(cfg, {"A": tiny_sites["A"], "E": empty,
                                         "X": tmp_path / "broken"}, tmp_path / "w", dp=None)
    assert set(clients) == {"A"} and set(refused) == {"E", "X"}
    assert "cannot be used" in refused["X"]


def test_site_protocol_changes_contrast_and_slices() -> None:
    rng = np.random.default_rng(0)
    img = {"t1ce": np.zeros((8, 8, 8), np.int16), "flair": np.zeros((8, 8, 8), np.int16)}
    img["t1ce"][2:6, 2:6, 2:6] = rng.integers(100, 1000, (4, 4, 4))
    img["flair"][2:6, 2:6, 2:6] = rng.integers(100, 1000, (4, 4, 4))
    p = SiteProfile("C", 1, (16, 16, 16), slice_factor=2, gamma={"t1ce": 1.5})
    out = apply_site_protocol(img, p, rng)
    assert (out["t1ce"][img["t1ce"] == 0] == 0).all()  # outside the brain stays 0
    assert out["t1ce"].max() <= img["t1ce"].max() + 1
    assert out["t1ce"].mean() < img["t1ce"].mean()  # gamma > 1 darkens mid-tones
    f = out["flair"][2:6, 2:6, 2:6].astype(float)
    assert np.allclose(f[..., 0], f[..., 1], atol=1) and np.allclose(f[..., 2], f[..., 3], atol=1)
    with pytest.raises(ValueError, match="gamma"):
        SiteProfile("D", 1, gamma={"pd": 1.2})


def test_simulate_with_dp_reports_epsilon_each_round(tiny_sites, tiny_train, tmp_path: Path):
    from transmed.federated.privacy import DPSettings

    dp = DPSettings(epsilon=8.0, delta=1e-5, max_grad_norm=1.0)
    cfg = FederatedConfig(train=tiny_train, rounds=2, min_clients=2, strategy="fedprox",
                          proximal_mu=0.01, dp=dp)  # fmt: skip
    sites = {k: v for k, v in tiny_sites.items() if k != "test"}
    state = simulate(cfg, sites, tmp_path / "fed")
    eps = [{s: m["dp_epsilon"] for s, m in r["site_metrics"].items()} for r in state.records]
    assert set(eps[0]) == {"A", "B"}
    for s in ("A", "B"):  # spent grows each round and stays within the target
        assert 0 < eps[0][s] < eps[1][s] <= 8.0
        assert state.records[1]["site_metrics"][s]["dp_steps"] == 4  # 2 rounds × 2 steps
    assert all(np.isfinite(w).all() for w in get_weights(state.model))


def test_a_site_stops_when_its_privacy_budget_is_spent(tiny_sites, tiny_train, tmp_path: Path):
    from transmed.federated.privacy import DPSettings, PrivacyError
    from transmed.federated.strategy import FederationState

    train = FederatedConfig(train=tiny_train).train
    site = SiteTrainer(tiny_sites["A"], tmp_path / "a", train, rounds=1,
                       dp=DPSettings(epsilon=8.0))  # planned for one round  # fmt: skip
    server = FederationState(FederatedConfig(train=tiny_train), tmp_path / "srv")
    fit = {"fingerprint": server.fingerprint, "lr": 1e-3}
    weights, metrics = site.fit(get_weights(server.model), {**fit, "round": 1})
    assert metrics["dp_steps"] == 2 and metrics["dp_epsilon"] <= 8.0
    with pytest.raises(PrivacyError, match="only 0 remain"):
        site.fit(weights, {**fit, "round": 2})
    # a restarted site keeps its ledger: the spent budget is not forgotten
    again = SiteTrainer(tiny_sites["A"], tmp_path / "a", train, rounds=1,
                        dp=DPSettings(epsilon=8.0))  # fmt: skip
    assert again.dp.steps_taken == 2 and again.dp.epsilon() == pytest.approx(metrics["dp_epsilon"])
    with pytest.raises(PrivacyError, match="another DP plan"):
        SiteTrainer(tiny_sites["A"], tmp_path / "a", train, rounds=2, dp=DPSettings(epsilon=8.0))


def test_local_steps_continue_one_lr_schedule_and_adam_state(tiny_sites, tiny_train, tmp_path):
    """Each round starts from the global weights, its steps take the federation's schedule
    where the previous round left it (not a fresh per-round decay to ~0), and AdamW's state
    carries over at the site (not a fresh AdamW every round)."""
    import torch
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    from transmed.federated.strategy import FederationState

    fed = FederatedConfig(train={**tiny_train, "warmup_epochs": 1.0, "lr": 0.01}, rounds=3)
    site = SiteTrainer(tiny_sites["A"], tmp_path / "a", fed.train, rounds=3)
    server = FederationState(fed, tmp_path / "srv")
    seen: list[tuple[float, int]] = []
    first: list[torch.Tensor] = []

    def pre(opt, *_):
        if not first:
            first.append(opt.param_groups[0]["params"][0].detach().clone())

    def post(opt, *_):
        p0 = opt.param_groups[0]["params"][0]
        seen.append((opt.param_groups[0]["lr"], int(opt.state[p0]["step"])))

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        w = get_weights(server.model)
        w = [a + 0.01 for a in w]  # not the site's own initial weights
        fit = {"fingerprint": server.fingerprint, "rounds": 3, "lr_peak": 0.01}
        w1, _ = site.fit(w, {**fit, "round": 1})
        assert np.allclose(first[0].numpy(), w[0])  # the trainer started from what was sent
        site.fit(w1, {**fit, "round": 2})
    finally:
        for h in handles:
            h.remove()
    # 2 steps per round, 6 in all, warm-up 2 steps then poly: (1 - (s - 2) / 4) ** 0.9
    want = [0.005, 0.01, 0.01, 0.01 * 0.75**0.9]
    assert [lr for lr, _ in seen] == pytest.approx(want)
    assert [s for _, s in seen] == [1, 2, 3, 4]
    assert fed.round_lr(2) == pytest.approx(0.01)
