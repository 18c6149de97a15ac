"""The server's strategy: Flower's FedAvg / FedProx / FedAdam, guarded, checkpointed, resumable.

Flower does the sampling and the weighted averaging (``flwr.server.strategy.FedAvg``,
``FedProx``). FedAdam (Reddi et al. 2021) is Flower's FedAvg followed by
:func:`server_adam_step`, whose state (m, v, step) lives in :class:`FederationState` and in
the round's checkpoint. Flower's own ``FedAdam`` is not used: it keeps m, v and the weights in
attributes it updates before the guards below can refuse a non-finite aggregate, it counts
rounds from Flower's ``server_round`` (1 again after a resume) with bias correction at t + 1,
and it moves buffers too. On top, each round:

- the fit instructions carry the round's learning rate, the model fingerprint and config (a
  site with another model refuses), and a fresh nonce (a site with the token signs it);
- a result is left out, with the reason logged, when its fingerprint differs, its
  authentication tag is missing or wrong (when a token is set), its weights are not finite or
  do not have the global model's shapes, or its case count is not positive; a site that
  dropped out (a failure) is logged; the round goes on with the rest, and when nothing usable
  is left the global model is kept as it was;
- the new global model is written atomically to ``OUT/checkpoints/global.pt`` (a complete
  TransMed checkpoint: ``transmed predict -m OUT/checkpoints/global.pt`` works), and the
  round's record to ``OUT/rounds.json``; a restarted server resumes from them (with FedAdam's
  moments, so that a resumed federation equals an uninterrupted one).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg, FedProx

from transmed.federated.config import FederatedConfig
from transmed.federated.params import (
    all_finite,
    check_signature,
    get_weights,
    model_fingerprint,
    state_from_weights,
)
from transmed.training.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger("transmed.federated")

EvalFn = Callable[[list[np.ndarray]], dict[str, float]]


class FederationState:
    """The server's books: the model, the rounds done, their records, and the files."""

    def __init__(self, config: FederatedConfig, out_dir: Path) -> None:
        from transmed.models import create_model

        self.config = config
        self.out_dir = Path(out_dir)
        self.ckpt = self.out_dir / "checkpoints" / "global.pt"
        kwargs = dict(config.train.model_kwargs)
        if config.train.deep_supervision:
            kwargs["deep_supervision"] = True
        import torch

        torch.manual_seed(config.train.seed)
        self.model = create_model(config.train.model, **kwargs)
        self.fingerprint = model_fingerprint(self.model)
        # per state_dict entry (get_weights' order): a trainable parameter, not a buffer
        names = {n for n, _ in self.model.named_parameters()}
        self.trainable = [k in names for k in self.model.state_dict()]
        self.rounds_done = 0
        self.records: list[dict[str, Any]] = []
        self.server_opt = ServerAdamState()  # FedAdam's moments (unused by FedAvg/FedProx)

    def resume(self) -> bool:
        """Load ``global.pt`` and ``rounds.json`` if present; True when resumed."""
        from transmed.training.config import ConfigError

        if not self.ckpt.is_file():
            return False
        ckpt = load_checkpoint(self.ckpt)
        saved = _saved_train(ckpt.get("federation", {}).get("train"))
        current = self.config.train.model_dump(mode="json")
        if saved != current:
            raise ConfigError(
                f"{self.ckpt}: was written by a federation with another training config; "
                "resume with the same config or choose another --out"
                + _legacy_hint(saved, current)
            )
        self.model.load_state_dict(ckpt["model"])
        self.rounds_done = int(ckpt.get("round", 0))
        if self.config.strategy == "fedadam":
            saved = ckpt.get("server_optimizer")
            if saved is None and self.rounds_done > 0:
                raise ConfigError(
                    f"{self.ckpt}: {self.rounds_done} rounds were run without FedAdam (no server "
                    "optimizer state); resume with their strategy or choose another --out")
            if saved is not None:
                self.server_opt = ServerAdamState.from_checkpoint(saved, self.ckpt)
        rec = self.out_dir / "rounds.json"
        if rec.is_file():
            done = self.rounds_done
            self.records = [r for r in json.loads(rec.read_text()) if r["round"] <= done]
        log.info("resuming after round %d from %s", self.rounds_done, self.ckpt)
        return True

    def save(self, server_round: int, weights: list[np.ndarray]) -> None:
        from transmed.io.atomic import atomic_write_text
        from transmed.transforms.preprocess import PreprocessConfig

        self.model.load_state_dict(state_from_weights(self.model, weights))
        self.rounds_done = server_round
        save_checkpoint(self.ckpt, {
            "model": self.model.state_dict(), "model_config": self.model.config,
            "train_config": self.config.train.model_dump(mode="json"),
            # every site preprocesses with TransMed's defaults (load_site_data)
            "preprocess_config": asdict(PreprocessConfig()),
            "federation": self.config.model_dump(mode="json"), "round": server_round,
            **({"server_optimizer": self.server_opt.to_checkpoint()}
               if self.config.strategy == "fedadam" else {}),
        })  # fmt: skip
        atomic_write_text(self.out_dir / "rounds.json",
                          json.dumps(self.records, indent=1, default=_jsonable) + "\n")


def _saved_train(saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """A global checkpoint's train config as the federation that wrote it meant it: model
    arguments it predates take the values they had then (``TrainConfig.stored``)."""
    from transmed.training.config import TrainConfig

    if not isinstance(saved, dict):
        return saved
    try:
        return TrainConfig(**saved).stored().model_dump(mode="json")
    except ValueError:  # not a valid config: compared as written, and refused
        return saved


def _legacy_hint(saved: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """How to resume when only model arguments whose default changed differ (a federation
    started before the change, resumed with a config that does not name them)."""
    from transmed.models import stored_kwargs

    if not isinstance(saved, dict):
        return ""
    keys = set(stored_kwargs(str(current.get("model", "")), {}))  # the changed defaults' keys
    s_kw, c_kw = saved.get("model_kwargs") or {}, current.get("model_kwargs") or {}
    diff = {k for k in set(s_kw) | set(c_kw) if s_kw.get(k) != c_kw.get(k)}
    same_rest = ({k: v for k, v in saved.items() if k != "model_kwargs"}
                 == {k: v for k, v in current.items() if k != "model_kwargs"})  # fmt: skip
    if not diff or not diff <= keys or not same_rest:
        return ""
    names = ", ".join(f"{k}: {s_kw[k]!r}" for k in sorted(diff) if k in s_kw)
    return (f" (it was started before a default changed; to resume it, set train.model_kwargs "
            f"{{{names}}} in the federation config)")


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def server_step(old: list[np.ndarray], mean: list[np.ndarray], trainable: list[bool],
                server_lr: float) -> list[np.ndarray]:  # fmt: skip
    """``old + server_lr · (mean − old)`` for trainable parameters; buffers take the mean.

    Raises:
        ValueError: lists of different lengths.
    """
    if not (len(old) == len(mean) == len(trainable)):
        raise ValueError(f"server step: {len(old)} global arrays, {len(mean)} averaged, "
                         f"{len(trainable)} flags")  # fmt: skip
    return [(o + server_lr * (m - o)).astype(m.dtype, copy=False) if t else m
            for o, m, t in zip(old, mean, trainable, strict=True)]  # fmt: skip


class ServerAdamState:
    """FedAdam's server state: the step count and the moments m, v (one array per weight)."""

    def __init__(self, step: int = 0, m: list[np.ndarray] | None = None,
                 v: list[np.ndarray] | None = None) -> None:  # fmt: skip
        self.step, self.m, self.v = step, m, v

    def to_checkpoint(self) -> dict[str, Any]:
        # tensors, not numpy arrays: torch.load(weights_only=True) reads them back
        import torch

        def tensors(xs: list[np.ndarray] | None) -> list[Any]:
            return [torch.from_numpy(np.ascontiguousarray(x)) for x in xs or []]

        return {"name": "fedadam", "step": self.step, "m": tensors(self.m), "v": tensors(self.v)}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], path: Path) -> ServerAdamState:
        """Raises: ValueError: not a FedAdam state, or m and v of different lengths."""
        m = [t.numpy() for t in saved.get("m", [])]
        v = [t.numpy() for t in saved.get("v", [])]
        if saved.get("name") != "fedadam" or len(m) != len(v):
            raise ValueError(f"{path}: the server optimizer state is not a FedAdam state")
        step = int(saved.get("step", 0))
        return cls(step, m or None, v or None) if step > 0 else cls()


def server_adam_step(old: list[np.ndarray], mean: list[np.ndarray], trainable: list[bool],
                     state: ServerAdamState, *, eta: float, tau: float, beta1: float,
                     beta2: float) -> tuple[list[np.ndarray], ServerAdamState]:  # fmt: skip
    """One FedAdam server update (Reddi et al. 2021, Algorithm 2; Kingma & Ba 2015's bias
    correction, t = this update's 1-based count).

    For each trainable array (shape kept): the pseudo-gradient Δ = mean − old,
    m ← β1·m + (1 − β1)·Δ, v ← β2·v + (1 − β2)·Δ², and
    new = old + η · m̂ / (√v̂ + τ) with m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t).
    Buffers take the mean (their m, v stay 0). ``state`` is not modified: the new one is
    returned, so that a refused aggregate leaves the books as they were.

    Raises:
        ValueError: lists of different lengths, or a state with other shapes.
    """
    if not (len(old) == len(mean) == len(trainable)):
        raise ValueError(f"server step: {len(old)} global arrays, {len(mean)} averaged, "
                         f"{len(trainable)} flags")  # fmt: skip
    m0 = state.m if state.m is not None else [np.zeros_like(o) for o in old]
    v0 = state.v if state.v is not None else [np.zeros_like(o) for o in old]
    if [x.shape for x in m0] != [o.shape for o in old] or [x.shape for x in v0] != [
            o.shape for o in old]:  # fmt: skip
        raise ValueError("server step: the FedAdam state does not have the model's shapes")
    t = state.step + 1
    c1, c2 = 1.0 - beta1**t, 1.0 - beta2**t
    new, m1, v1 = [], [], []
    for o, a, mi, vi, tr in zip(old, mean, m0, v0, trainable, strict=True):
        if not tr:
            new.append(a)
            m1.append(mi)
            v1.append(vi)
            continue
        d = a - o  # pseudo-gradient, same shape as the array
        mi = beta1 * mi + (1.0 - beta1) * d
        vi = beta2 * vi + (1.0 - beta2) * d * d
        step = eta * (mi / c1) / (np.sqrt(vi / c2) + tau)
        new.append((o + step).astype(a.dtype, copy=False))
        m1.append(mi.astype(a.dtype, copy=False))
        v1.append(vi.astype(a.dtype, copy=False))
    return new, ServerAdamState(t, m1, v1)


def _reject_reason(res: Any, state: FederationState, nonce: str, token: str | None,
                   shapes: list[tuple[int, ...]]) -> str | None:  # fmt: skip
    m = res.metrics or {}
    if str(m.get("fingerprint", "")) != state.fingerprint:
        return "model fingerprint differs from the server's"
    if token is not None and not check_signature(token, nonce, state.fingerprint,
                                                 str(m.get("auth", ""))):  # fmt: skip
        return "authentication failed (missing or wrong token)"
    if res.num_examples <= 0:
        return f"reported {res.num_examples} training cases"
    weights = parameters_to_ndarrays(res.parameters)
    if [tuple(w.shape) for w in weights] != shapes:
        return "weights do not have the global model's shapes"
    if not all_finite(weights):
        return "non-finite weights (NaN/inf)"
    return None


def make_strategy(config: FederatedConfig, state: FederationState, *, token: str | None = None,
                  evaluate: EvalFn | None = None, min_clients: int | None = None,
                  ) -> Any:  # fmt: skip
    """A Flower strategy (FedAvg, FedProx, or FedAvg + :func:`server_adam_step` for FedAdam)
    with the guards and books described above."""
    base = FedProx if config.strategy == "fedprox" else FedAvg
    offset = state.rounds_done
    n_min = min_clients or config.min_clients

    class TransMedStrategy(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            kwargs: dict[str, Any] = dict(
                fraction_fit=config.fraction_fit, fraction_evaluate=0.0,
                min_fit_clients=n_min, min_available_clients=n_min,
                min_evaluate_clients=n_min, accept_failures=True,
                initial_parameters=ndarrays_to_parameters(get_weights(state.model)),
                evaluate_fn=self._evaluate if evaluate is not None else None,
            )  # fmt: skip
            if base is FedProx:
                kwargs["proximal_mu"] = config.proximal_mu
            super().__init__(**kwargs)
            self.nonces: dict[int, str] = {}
            self.sampled: dict[int, list[str]] = {}
            self.record: dict[str, Any] = {}

        def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any,
                          ) -> list[tuple[Any, FitIns]]:  # fmt: skip
            r = server_round + offset
            nonce = secrets.token_hex(16)
            self.nonces[server_round] = nonce
            extra = {"round": r, "rounds": config.rounds, "lr": config.round_lr(r),
                     "lr_peak": config.train.lr,
                     "fingerprint": state.fingerprint,
                     "model_config": json.dumps(state.model.config, default=str),
                     "nonce": nonce}  # fmt: skip
            self.record = {"round": r, "t_start": time.time()}
            pairs = super().configure_fit(server_round, parameters, client_manager)
            self.sampled[server_round] = [c.cid for c, _ in pairs]
            return [(c, FitIns(ins.parameters, {**ins.config, **extra})) for c, ins in pairs]

        def aggregate_fit(self, server_round: int, results: list, failures: list,
                          ) -> tuple[Parameters | None, dict[str, Any]]:  # fmt: skip
            r = server_round + offset
            shapes = [tuple(w.shape) for w in get_weights(state.model)]
            nonce = self.nonces.get(server_round, "")
            good, rejected = [], []
            for proxy, res in results:
                reason = _reject_reason(res, state, nonce, token, shapes)
                if reason:
                    log.warning("round %d: update from site %s left out: %s", r, proxy.cid, reason)
                    rejected.append({"site": proxy.cid, "reason": reason})
                else:
                    good.append((proxy, res))
            # a failure is an exception (connection lost, site error) or a failed result;
            # exceptions do not name the site, so name the sampled sites that did not answer
            answered = {p.cid for p, _ in results}
            named = [f[0].cid for f in failures if isinstance(f, tuple)]
            missing = [c for c in self.sampled.get(server_round, []) if c not in answered]
            whys = [repr(f) for f in failures if isinstance(f, BaseException)]
            silent = [c for c in missing if c not in named]
            for i, who in enumerate(named + silent):
                why = "failed result" if i < len(named) else (
                    whys[i - len(named)] if len(whys) == len(silent) else "; ".join(whys))
                log.warning("round %d: site %s dropped out (%s); going on without it", r, who, why)
                rejected.append({"site": who, "reason": f"dropped out: {why}"[:300]})
            self.record.update({
                "sites": sorted(p.cid for p, _ in good), "left_out": rejected,
                "site_metrics": {p.cid: {k: v for k, v in res.metrics.items()
                                         if k not in ("auth", "fingerprint")}
                                 for p, res in good},
            })  # fmt: skip
            adam_state: ServerAdamState | None = None
            if not good:
                log.warning("round %d: no usable update; the global model is kept", r)
                params = ndarrays_to_parameters(get_weights(state.model))
                metrics: dict[str, Any] = {}
            else:
                params, metrics = super().aggregate_fit(server_round, good, [])
                if config.strategy == "fedadam":
                    adam_weights, adam_state = server_adam_step(
                        get_weights(state.model), parameters_to_ndarrays(params),
                        state.trainable, state.server_opt, eta=config.server_eta_at(r),
                        tau=config.server_tau, beta1=config.server_beta1,
                        beta2=config.server_beta2)  # fmt: skip
                    params = ndarrays_to_parameters(adam_weights)
                    self.record["server_eta"] = config.server_eta_at(r)
                elif config.server_lr != 1.0:
                    params = ndarrays_to_parameters(server_step(
                        get_weights(state.model), parameters_to_ndarrays(params),
                        state.trainable, config.server_lr))  # fmt: skip
            weights = parameters_to_ndarrays(params)
            if not all_finite(weights):  # cannot happen with finite inputs; never save it
                log.error("round %d: aggregate not finite; the global model is kept", r)
                weights = get_weights(state.model)
                params = ndarrays_to_parameters(weights)
            elif adam_state is not None:  # the moments move with the model, never without it
                state.server_opt = adam_state
            self.record["t_end"] = time.time()
            state.records.append(self.record)
            state.save(r, weights)
            return params, metrics

        def evaluate(self, server_round: int, parameters: Parameters,
                     ) -> tuple[float, dict[str, Any]] | None:  # fmt: skip
            out = super().evaluate(server_round, parameters)
            if out is not None and server_round > 0 and state.records:
                state.records[-1]["eval"] = out[1]
                state.save(state.rounds_done, get_weights(state.model))
            return out

        def _evaluate(self, server_round: int, ndarrays: list[np.ndarray],
                      cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:  # fmt: skip
            if evaluate is None:  # Flower calls this only when an evaluate_fn was given
                raise ValueError("no evaluation function was configured on the server")
            scores = evaluate(ndarrays)
            return 1.0 - float(scores.get("dice_mean", 0.0)), scores

    return TransMedStrategy()
