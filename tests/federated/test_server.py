"""The server side over in-process sites: FedAvg arithmetic, drop-outs, non-finite or foreign
updates, authentication, atomic checkpoints and resume, and what crosses the wire."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.client import NumPyClient
from flwr.common import serde
from flwr.proto.transport_pb2 import ClientMessage, ServerMessage

from transmed.federated.config import FederatedConfig
from transmed.federated.params import get_weights, sign_update
from transmed.federated.simulation import run_federation
from transmed.training.checkpoint import load_checkpoint, load_model

TRAIN = {"model": "unet", "patch_size": [16, 16, 16],
         "model_kwargs": {"features": [4, 8], "encoder_blocks": [1, 1], "decoder_blocks": [1]},
         "iters_per_epoch": 1, "batch_size": 1}  # fmt: skip


def _config(**kw) -> FederatedConfig:
    return FederatedConfig(train=TRAIN, rounds=kw.pop("rounds", 2), min_clients=1, **kw)


class FakeSite(NumPyClient):
    """Adds ``delta`` to every weight; optionally fails or returns NaN in a given round."""

    def __init__(self, delta: float, n: int, fingerprint: str, *, fail_round: int = 0,
                 nan_round: int = 0, token: str | None = None) -> None:  # fmt: skip
        self.delta, self.n, self.fp = delta, n, fingerprint
        self.fail_round, self.nan_round, self.token = fail_round, nan_round, token
        self.configs: list[dict] = []

    def fit(self, parameters, config):
        self.configs.append(dict(config))
        r = int(config["round"])
        if r == self.fail_round:
            raise ConnectionError("site went away mid-round")
        out = [w + self.delta for w in parameters]
        if r == self.nan_round:
            out[0] = out[0] * np.nan
        metrics = {"fingerprint": self.fp, "train_loss": 0.5}
        if self.token:
            metrics["auth"] = sign_update(self.token, str(config["nonce"]), self.fp)
        return out, self.n, metrics


def _fingerprint(cfg: FederatedConfig, tmp: Path) -> tuple[str, list[np.ndarray]]:
    from transmed.federated.strategy import FederationState

    s = FederationState(cfg, tmp / "probe")
    return s.fingerprint, get_weights(s.model)


def test_fedavg_weights_dropouts_and_nonfinite_updates(tmp_path: Path) -> None:
    cfg = _config(rounds=2)
    fp, w0 = _fingerprint(cfg, tmp_path)
    sites = {"a": FakeSite(1.0, 3, fp), "b": FakeSite(2.0, 1, fp, fail_round=2),
             "c": FakeSite(5.0, 2, fp, nan_round=1)}  # fmt: skip
    state = run_federation(cfg, sites, tmp_path / "fed")
    # round 1: a (+1, 3 cases) and b (+2, 1 case); c's NaN left out -> +1.25
    # round 2: b dropped out; a (+1) and c (+5, 2 cases) -> +(3·1 + 2·5)/5 = +2.6
    got = get_weights(state.model)
    for g, w in zip(got, w0, strict=True):
        np.testing.assert_allclose(g, w + 1.25 + 2.6, rtol=1e-5, atol=1e-5)
    rec = json.loads((tmp_path / "fed" / "rounds.json").read_text())
    assert [r["sites"] for r in rec] == [["a", "b"], ["a", "c"]]
    assert "non-finite" in rec[0]["left_out"][0]["reason"]
    assert rec[1]["left_out"][0]["site"] == "b" and "dropped out" in rec[1]["left_out"][0]["reason"]
    # the checkpoint is a complete TransMed checkpoint of the last round
    ckpt = load_checkpoint(tmp_path / "fed" / "checkpoints" / "global.pt")
    assert ckpt["round"] == 2
    model = load_model(tmp_path / "fed" / "checkpoints" / "global.pt")
    for p, g in zip(model.state_dict().values(), got, strict=True):
        np.testing.assert_allclose(p.numpy(), g)


def test_server_step_size_scales_the_averaged_update_of_parameters_only(tmp_path: Path) -> None:
    from transmed.federated.strategy import server_step

    cfg = _config(rounds=2, server_lr=3.0)
    fp, w0 = _fingerprint(cfg, tmp_path)
    sites = {"a": FakeSite(1.0, 3, fp), "b": FakeSite(2.0, 1, fp)}
    state = run_federation(cfg, sites, tmp_path / "fed")
    # each round the weighted mean moves +1.25; η_g = 3 moves the global model +3.75
    for g, w in zip(get_weights(state.model), w0, strict=True):
        np.testing.assert_allclose(g, w + 2 * 3.75, rtol=1e-5, atol=1e-4)
    # buffers (running statistics) take the plain mean: a variance never overshoots below 0
    old, mean = [np.ones(2), np.ones(2)], [np.full(2, 0.5), np.full(2, 0.5)]
    out = server_step(old, mean, [True, False], 3.0)
    np.testing.assert_allclose(out[0], -0.5)
    np.testing.assert_allclose(out[1], 0.5)
    with pytest.raises(ValueError, match="server step"):
        server_step(old, mean[:1], [True, False], 3.0)
    with pytest.raises(ValueError):
        _config(server_lr=0.0)


def test_foreign_model_and_bad_token_are_left_out(tmp_path: Path) -> None:
    cfg = _config(rounds=1)
    fp, w0 = _fingerprint(cfg, tmp_path)
    sites = {"good": FakeSite(1.0, 1, fp, token="s3cret"),
             "other_model": FakeSite(9.0, 1, "0123456789abcdef", token="s3cret"),
             "no_token": FakeSite(7.0, 1, fp)}  # fmt: skip
    state = run_federation(cfg, sites, tmp_path / "fed", token="s3cret")
    for g, w in zip(get_weights(state.model), w0, strict=True):
        np.testing.assert_allclose(g, w + 1.0, rtol=1e-6, atol=1e-6)
    reasons = {r["site"]: r["reason"] for r in state.records[0]["left_out"]}
    assert "fingerprint" in reasons["other_model"]
    assert "authentication" in reasons["no_token"]


def test_all_sites_fail_keeps_the_global_model(tmp_path: Path) -> None:
    cfg = _config(rounds=1)
    fp, w0 = _fingerprint(cfg, tmp_path)
    state = run_federation(cfg, {"x": FakeSite(1.0, 1, fp, fail_round=1)}, tmp_path / "fed")
    for g, w in zip(get_weights(state.model), w0, strict=True):
        np.testing.assert_array_equal(g, w)
    assert state.records[0]["sites"] == []


def test_resume_continues_after_the_last_checkpointed_round(tmp_path: Path) -> None:
    fp, w0 = _fingerprint(_config(), tmp_path)
    site = FakeSite(1.0, 1, fp)
    run_federation(_config(rounds=2), {"a": site}, tmp_path / "fed")
    assert [c["round"] for c in site.configs] == [1, 2]
    state = run_federation(_config(rounds=3), {"a": site}, tmp_path / "fed")  # restarted
    assert [c["round"] for c in site.configs] == [1, 2, 3]  # only round 3 was run again
    for g, w in zip(get_weights(state.model), w0, strict=True):
        np.testing.assert_allclose(g, w + 3.0, rtol=1e-5, atol=1e-5)
    assert [r["round"] for r in state.records] == [1, 2, 3]
    with pytest.raises(ValueError, match="another training config"):
        other = FederatedConfig(train={**TRAIN, "lr": 0.5}, rounds=4, min_clients=1)
        run_federation(other, {"a": site}, tmp_path / "fed")


def test_fedprox_sends_mu_and_round_lr(tmp_path: Path) -> None:
    cfg = _config(rounds=2, strategy="fedprox", proximal_mu=0.1)
    fp, _ = _fingerprint(cfg, tmp_path)
    site = FakeSite(0.0, 1, fp)
    run_federation(cfg, {"a": site}, tmp_path / "fed")
    assert [c["proximal_mu"] for c in site.configs] == [0.1, 0.1]
    assert [c["lr"] for c in site.configs] == [cfg.round_lr(1), cfg.round_lr(2)]
    assert [c["lr_peak"] for c in site.configs] == [cfg.train.lr] * 2
    assert site.configs[0]["nonce"] != site.configs[1]["nonce"]


def test_wire_carries_weights_and_numbers_only(tmp_path: Path) -> None:
    cfg = _config(rounds=1)
    fp, w0 = _fingerprint(cfg, tmp_path)
    wire: list = []
    run_federation(cfg, {"a": FakeSite(1.0, 4, fp)}, tmp_path / "fed", wire=wire)
    ups = [b for _, d, b in wire if d == "site->server"]
    downs = [b for _, d, b in wire if d == "server->site"]
    assert len(ups) == 1 and len(downs) == 1
    msg = ClientMessage.FitRes()
    msg.ParseFromString(ups[0])
    res = serde.fit_res_from_proto(msg)
    # the update is exactly the model's tensors, their count and shapes
    from flwr.common import parameters_to_ndarrays

    sent = parameters_to_ndarrays(res.parameters)
    assert [s.shape for s in sent] == [w.shape for w in w0]
    assert res.num_examples == 4
    assert set(res.metrics) <= {"fingerprint", "train_loss", "auth", "local_steps",
                                "fit_time_s", "dp_epsilon", "dp_delta",
                                "dp_noise_multiplier", "dp_steps"}  # fmt: skip
    down = ServerMessage.FitIns()
    down.ParseFromString(downs[0])
    assert torch.tensor(len(down.parameters.tensors)) == len(w0)


def test_a_federation_started_before_the_axial_layout_default_resumes_as_it_was(
        tmp_path: Path) -> None:  # fmt: skip
    """A federation's config pins model arguments whose default changed (the server, every
    site and its global checkpoint build one model); one started before the change (its saved
    train config names no ``axial_layout``) is refused with the setting that resumes it, and
    resumes, as chained, once the config names it."""
    from transmed.federated.strategy import FederationState
    from transmed.training.checkpoint import save_checkpoint

    tiny = {"features": [8, 16, 16], "encoder_blocks": [1, 1, 1], "attention_head_dim": 8,
            "axial_stages": [2], "decoder_blocks": [1, 1], "patch_size": 32}  # fmt: skip
    train = {**TRAIN, "model": "transmed_a", "model_kwargs": tiny, "patch_size": [32, 32, 32]}
    new = FederatedConfig(train=train, rounds=2, min_clients=1)
    assert new.train.model_kwargs["axial_layout"] == "residual"  # pinned for a new federation
    state = FederationState(new, tmp_path / "new")
    state.save(1, get_weights(state.model))
    saved = load_checkpoint(state.ckpt)
    assert saved["federation"]["train"]["model_kwargs"]["axial_layout"] == "residual"
    assert FederationState(new, tmp_path / "new").resume()  # the same config resumes it

    # a pre-change federation: its model was chained, its saved config names no layout
    chained = FederatedConfig(train={**train, "model_kwargs": {**tiny, "axial_layout": "chained"}},
                              rounds=2, min_clients=1)  # fmt: skip
    old = FederationState(chained, tmp_path / "old")
    old.save(1, get_weights(old.model))
    ckpt = load_checkpoint(old.ckpt)
    ckpt["federation"]["train"]["model_kwargs"].pop("axial_layout")
    save_checkpoint(old.ckpt, ckpt)
    with pytest.raises(ValueError, match=r"another training config.*axial_layout: 'chained'"):
        FederationState(new, tmp_path / "old").resume()
    again = FederationState(chained, tmp_path / "old")
    assert again.resume() and again.rounds_done == 1
    for a, b in zip(get_weights(again.model), get_weights(old.model), strict=True):
        np.testing.assert_array_equal(a, b)
    # a config that differs elsewhere gets no such hint
    with pytest.raises(ValueError, match="another training config") as err:
        FederationState(FederatedConfig(train={**train, "lr": 0.5}, rounds=2, min_clients=1),
                        tmp_path / "old").resume()  # fmt: skip
    assert "axial_layout" not in str(err.value)
