"""FedAdam on the server (Reddi et al. 2021): the update's numbers, its state in the round's
checkpoint, and a resumed federation that equals an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.client import NumPyClient

from transmed.federated.config import FederatedConfig, load_federated_config
from transmed.federated.params import get_weights
from transmed.federated.simulation import run_federation
from transmed.federated.strategy import FederationState, ServerAdamState, server_adam_step
from transmed.training.checkpoint import load_checkpoint
from transmed.training.config import ConfigError

TRAIN = {"model": "unet", "patch_size": [16, 16, 16],
         "model_kwargs": {"features": [4, 8], "encoder_blocks": [1, 1], "decoder_blocks": [1]},
         "iters_per_epoch": 1, "batch_size": 1}  # fmt: skip


def _config(**kw) -> FederatedConfig:
    kw.setdefault("strategy", "fedadam")
    return FederatedConfig(train=TRAIN, min_clients=1, **kw)


class RoundSite(NumPyClient):
    """Moves every weight by ``deltas[round - 1]``: a pseudo-gradient that changes sign and
    size from round to round, so the server's m and v matter (with a constant one, Adam's
    bias-corrected step would be the same with or without its history)."""

    def __init__(self, deltas: list[float], fingerprint: str) -> None:
        self.deltas, self.fp, self.rounds = deltas, fingerprint, []

    def fit(self, parameters, config):
        r = int(config["round"])
        self.rounds.append(r)
        return [w + self.deltas[r - 1] for w in parameters], 1, {"fingerprint": self.fp}


def test_server_adam_step_matches_a_hand_computation() -> None:
    # η 0.1, τ 0.01, β 0.9/0.99; one trainable array [1, 2] and one buffer [1]
    old = [np.array([1.0, 2.0]), np.array([1.0])]
    mean = [np.array([1.5, 1.0]), np.array([0.25])]
    hyper = {"eta": 0.1, "tau": 0.01, "beta1": 0.9, "beta2": 0.99}
    w1, s1 = server_adam_step(old, mean, [True, False], ServerAdamState(), **hyper)
    # t = 1: Δ = [0.5, −1]; m = [0.05, −0.1], v = [0.0025, 0.01]; m̂ = Δ, √v̂ = |Δ|
    # → 1 + 0.1·0.5/0.51, 2 − 0.1·1/1.01
    np.testing.assert_allclose(w1[0], [1.0980392156862746, 1.900990099009901], rtol=1e-12)
    np.testing.assert_allclose(s1.m[0], [0.05, -0.1], rtol=1e-12)
    np.testing.assert_allclose(s1.v[0], [0.0025, 0.01], rtol=1e-12)
    assert s1.step == 1
    np.testing.assert_array_equal(w1[1], [0.25])  # the buffer takes the mean
    np.testing.assert_array_equal(s1.v[1], [0.0])
    # t = 2, the same mean: Δ = [0.40196, −0.90099]; m = [0.085196, −0.180099],
    # v = [0.0040907, 0.0180178]; bias corrections 0.19 and 0.0199
    w2, s2 = server_adam_step(w1, mean, [True, False], s1, **hyper)
    np.testing.assert_allclose(s2.m[0], [0.08519607843137253, -0.18009900990099004], rtol=1e-12)
    np.testing.assert_allclose(s2.v[0], [0.0040907247212610565, 0.018017831585138727],
                               rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(w2[0], [1.1948040883752051, 1.8024092235447493], rtol=1e-12)
    assert s2.step == 2 and s1.step == 1  # the old state is not modified
    # float32 weights stay float32 (no float64 upcast on the wire)
    w32, _ = server_adam_step([o.astype(np.float32) for o in old],
                              [a.astype(np.float32) for a in mean], [True, False],
                              ServerAdamState(), **hyper)  # fmt: skip
    assert w32[0].dtype == np.float32
    with pytest.raises(ValueError, match="server step"):
        server_adam_step(old, mean[:1], [True, False], ServerAdamState(), **hyper)
    with pytest.raises(ValueError, match="shapes"):
        server_adam_step(old, mean, [True, False], ServerAdamState(1, [np.zeros(3)] * 2,
                                                                   [np.zeros(3)] * 2), **hyper)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("server_eta", 0.0, "server_eta"), ("server_tau", -1e-3, "server_tau"),
    ("server_beta1", 1.0, "server_beta1"), ("server_beta2", -0.1, "server_beta2"),
    ("server_lr", 2.0, "FedAdam's server step size is server_eta"),
])  # fmt: skip
def test_bad_fedadam_settings_are_refused(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_federated_config(None, strategy="fedadam", **{key: value})


def test_resumed_fedadam_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    deltas = [0.3, -0.1, 0.05, -0.2]
    probe = FederationState(_config(rounds=4), tmp_path / "probe")
    fp, w0 = probe.fingerprint, get_weights(probe.model)
    # the constant η: the run of 2 rounds and its continuation to 4 share the schedule
    hyper = {"server_eta": 0.05, "server_eta_schedule": "constant"}
    whole = run_federation(_config(rounds=4, **hyper), {"a": RoundSite(deltas, fp)},
                           tmp_path / "whole")  # fmt: skip
    site = RoundSite(deltas, fp)
    run_federation(_config(rounds=2, **hyper), {"a": site}, tmp_path / "split")
    ckpt = load_checkpoint(tmp_path / "split" / "checkpoints" / "global.pt")  # weights_only
    assert ckpt["server_optimizer"]["step"] == 2
    resumed = run_federation(_config(rounds=4, **hyper), {"a": site}, tmp_path / "split")
    assert site.rounds == [1, 2, 3, 4]  # rounds 1-2 were not run again
    for a, b, w in zip(get_weights(whole.model), get_weights(resumed.model), w0, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-7)
        assert not np.allclose(a, w)  # the federation moved the model
    assert resumed.server_opt.step == whole.server_opt.step == 4
    for a, b in zip(whole.server_opt.v, resumed.server_opt.v, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    rec = json.loads((tmp_path / "split" / "rounds.json").read_text())
    assert [r["server_eta"] for r in rec] == [0.05] * 4


def test_fresh_moments_after_a_restart_would_differ(tmp_path: Path) -> None:
    """The resume test above is not vacuous: continuing from round 2's weights with m = v = 0
    ends away from the uninterrupted run."""
    deltas = [0.3, -0.1, 0.05, -0.2]
    hyper = {"server_eta": 0.05, "server_eta_schedule": "constant"}
    probe = FederationState(_config(rounds=4), tmp_path / "probe")
    fp = probe.fingerprint
    whole = run_federation(_config(rounds=4, **hyper), {"a": RoundSite(deltas, fp)},
                           tmp_path / "whole")  # fmt: skip
    run_federation(_config(rounds=2, **hyper), {"a": RoundSite(deltas, fp)}, tmp_path / "split")
    state = FederationState(_config(rounds=4, **hyper), tmp_path / "split")
    state.resume()
    w2 = get_weights(state.model)
    w, s = w2, ServerAdamState()  # what a server that forgot its moments would do
    for d in deltas[2:]:
        w, s = server_adam_step(w, [x + d for x in w], state.trainable, s, eta=0.05, tau=1e-3,
                                beta1=0.9, beta2=0.99)  # fmt: skip
    gap = max(float(np.abs(a - b).max()) for a, b in zip(w, get_weights(whole.model), strict=True))
    assert gap > 1e-3


def test_fedadam_cannot_resume_rounds_run_without_it(tmp_path: Path) -> None:
    probe = FederationState(_config(rounds=1), tmp_path / "probe")
    site = RoundSite([0.1, 0.1], probe.fingerprint)
    run_federation(_config(rounds=1, strategy="fedavg"), {"a": site}, tmp_path / "fed")
    with pytest.raises(ConfigError, match="without FedAdam"):
        run_federation(_config(rounds=2), {"a": site}, tmp_path / "fed")


def test_server_eta_follows_the_federation_schedule() -> None:
    cfg = FederatedConfig(train={**TRAIN, "warmup_epochs": 0.0, "lr": 1e-3}, rounds=10,
                          strategy="fedadam", server_eta=0.02)  # fmt: skip
    assert cfg.server_eta_at(1) == pytest.approx(0.02)
    assert cfg.server_eta_at(10) == pytest.approx(0.02 * cfg.round_lr(10) / 1e-3)
    assert cfg.server_eta_at(10) < 0.2 * cfg.server_eta_at(1)
    assert _config(server_eta_schedule="constant", rounds=10).server_eta_at(10) == 0.01
