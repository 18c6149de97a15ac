"""Entry points behind ``transmed federated simulate|server|client``.

Folders of a federation (``OUT``)::

    checkpoints/global.pt   the global model after the last round (a TransMed checkpoint)
    rounds.json             per round: sites used, sites left out and why, their metrics
                            (loss, steps, ε spent), held-out Dice when a test set is given
    sites/<name>/           (simulate) each site's work folder: preprocessing cache and the
                            current round's trainer run
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from transmed.federated.client import SiteDataError, SiteTrainer, make_numpy_client
from transmed.federated.config import FederatedConfig
from transmed.federated.params import set_weights
from transmed.federated.privacy import DPSettings, PrivacyError
from transmed.federated.simulation import run_federation
from transmed.federated.strategy import EvalFn, FederationState

log = logging.getLogger("transmed.federated")

TOKEN_ENV = "TRANSMED_FEDERATED_TOKEN"


def read_token(token_file: Path | None) -> str | None:
    """The shared federation token from a file (first line) or ``$TRANSMED_FEDERATED_TOKEN``.

    Never a command-line value: those show up in process lists.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise ValueError(f"{token_file}: cannot read a token from this file") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise ValueError("the federation token must have at least 16 characters")
    return token or None


def held_out_evaluator(test_data: Path, config: FederatedConfig, work: Path) -> EvalFn:
    """Mean Dice per region of a weight list on a held-out set (the trainer's validation,
    i.e. the ``predict`` code path)."""
    from transmed.federated.client import load_site_data
    from transmed.models import create_model
    from transmed.training.trainer import validate

    folder, ids = load_site_data(test_data, work)
    paths = [folder / f"{i}.npz" for i in ids]
    kwargs = dict(config.train.model_kwargs)
    model = create_model(config.train.model, **kwargs)

    def evaluate(weights: list[np.ndarray]) -> dict[str, float]:
        set_weights(model, weights)
        model.eval()
        scores = validate(model, paths, config.train, "fp32")
        return {k.replace("val_", ""): float(v) for k, v in scores.items()}

    return evaluate


def build_sites(config: FederatedConfig, site_data: dict[str, Path], work: Path, *,
                dp: DPSettings | None, token: str | None = None,
                ) -> tuple[dict[str, Any], dict[str, str]]:  # fmt: skip
    """One in-process client per usable site; the others are reported and left out."""
    clients, refused = {}, {}
    for k, (name, data) in enumerate(sorted(site_data.items())):
        try:
            site = SiteTrainer(data, work / name, config.train, rounds=config.rounds,
                               local_epochs=config.local_epochs, dp=dp, seed=k + 1,
                               keep_optimizer_state=config.keep_optimizer_state,
                               local_lr_schedule=config.local_lr_schedule,
                               local_optimizer=config.local_optimizer,
                               local_momentum=config.local_momentum)  # fmt: skip
        except (SiteDataError, PrivacyError) as exc:
            log.error("site %s leaves the federation: %s", name, exc)
            refused[name] = str(exc)
            continue
        if site.dp is not None:
            p = site.dp.plan
            log.info("site %s: DP-SGD σ=%.3g, q=%.3g, %d steps → ε≤%.3g at δ=%g", name,
                     p.noise_multiplier, p.sample_rate, p.steps, p.epsilon_planned, p.delta)
        clients[name] = make_numpy_client(site, token)
    return clients, refused


def simulate(config: FederatedConfig, site_data: dict[str, Path], out: Path, *,
             test_data: Path | None = None, token: str | None = None,
             wire: list | None = None) -> FederationState:  # fmt: skip
    """All sites on this machine, one at a time, through Flower's server and wire format."""
    out = Path(out)
    clients, refused = build_sites(config, site_data, out / "sites", dp=config.dp, token=token)
    if not clients:
        raise ValueError(f"no site can take part: {refused}")
    evaluate = None
    if test_data is not None:
        evaluate = held_out_evaluator(test_data, config, out / "test_preprocessed")
    return run_federation(config, clients, out, evaluate=evaluate, wire=wire, token=token)


def serve(config: FederatedConfig, out: Path, address: str, token: str,
          test_data: Path | None = None, tls_dir: Path | None = None,
          ) -> FederationState:  # fmt: skip
    """A Flower server over gRPC (``flwr.server.start_server``) for real sites.

    ``tls_dir`` holds ``ca.crt``, ``server.pem`` and ``server.key`` (TLS); without it the
    connection is plain gRPC, for loopback or a private network.
    """
    from flwr.server import Server, ServerConfig, start_server
    from flwr.server.client_manager import SimpleClientManager

    from transmed.federated.strategy import make_strategy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = FederationState(config, out)
    state.resume()
    todo = config.rounds - state.rounds_done
    if todo <= 0:
        return state
    evaluate = None
    if test_data is not None:
        evaluate = held_out_evaluator(test_data, config, out / "test_preprocessed")
    strategy = make_strategy(config, state, token=token, evaluate=evaluate)
    server = Server(client_manager=SimpleClientManager(), strategy=strategy)
    certs = None
    if tls_dir is not None:
        certs = tuple((Path(tls_dir) / n).read_bytes() for n in ("ca.crt", "server.pem",
                                                                 "server.key"))  # fmt: skip
    start_server(server_address=address, server=server, strategy=strategy,
                 config=ServerConfig(num_rounds=todo, round_timeout=config.round_timeout_s),
                 certificates=certs)  # fmt: skip
    return state


def wait_for_server(address: str, max_wait_s: float | None, interval_s: float = 1.0) -> None:
    """Block until ``host:port`` accepts a TCP connection; ConnectionError after ``max_wait_s``."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
    logged = False
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                return
        except OSError as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise ConnectionError(
                    f"the federation server {address} did not answer within {max_wait_s:g} s "
                    f"({exc})"
                ) from None
            if not logged:
                log.info("waiting for the federation server %s (%s)", address, exc)
                logged = True
            time.sleep(interval_s)


def join(config: FederatedConfig, data: Path, work: Path, address: str, token: str, *,
         dp: DPSettings | None = None, max_retries: int | None = None,
         max_wait_s: float | None = 600.0, ca_cert: Path | None = None) -> None:
    """Run this site's client until the server ends the federation (``flwr`` gRPC client).

    The client first waits up to ``max_wait_s`` seconds for the server to accept connections:
    Flower's gRPC-bidi transport ignores its retry settings, so a site started before the server
    listened failed at once, and the server then waited for it forever (the hang of the gRPC
    test, 2026-11-30).
    """
    from flwr.client import start_client

    site = SiteTrainer(data, work, config.train, rounds=config.rounds,
                       local_epochs=config.local_epochs, dp=dp,
                       keep_optimizer_state=config.keep_optimizer_state,
                       local_lr_schedule=config.local_lr_schedule,
                       local_optimizer=config.local_optimizer,
                       local_momentum=config.local_momentum)  # fmt: skip
    wait_for_server(address, max_wait_s)
    start_client(server_address=address, client=make_numpy_client(site, token).to_client(),
                 insecure=ca_cert is None, max_retries=max_retries, max_wait_time=max_wait_s,
                 root_certificates=Path(ca_cert).read_bytes() if ca_cert else None)  # fmt: skip
