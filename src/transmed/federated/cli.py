"""``transmed federated simulate|server|client`` (registered on the root app in transmed.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

from transmed.cli_errors import user_errors

app = typer.Typer(
    help="Federated training across sites (Flower) with optional DP-SGD (Opacus).",
    no_args_is_help=True,
    rich_markup_mode="markdown",  # "[1e-5]" is a default, not a rich tag
)

_CONFIG = typer.Option(None, "--config", help="JSON/YAML federation config (train: block etc.).")
_SERVER_LR = typer.Option(
    None, "--server-lr", help="Server step size η_g [1: plain FedAvg]; >1 scales the averaged "
    "move (it hurt with AdamW sites: docs/federated.md).")
_STRATEGY = typer.Option(
    None, "--strategy", help="fedavg, fedprox or fedadam (server Adam on the averaged move; "
    "its η, τ, betas: server_eta etc. in --config).")
_SERVER_ETA = typer.Option(
    None, "--server-eta", help="FedAdam's server step η [1e-2], decayed with the federation's "
    "schedule.")
_EPS = typer.Option(None, "--dp-epsilon", help="DP-SGD target ε over all rounds (per site).")
_DELTA = typer.Option(None, "--dp-delta", help="DP δ [1e-5]; must be below 1/cases.")
_CLIP = typer.Option(None, "--dp-clip", help="Per-sample gradient clipping norm C [1.0].")
_NOISE = typer.Option(None, "--dp-noise", help="Noise multiplier σ (instead of, or with, ε).")
_TOKEN = typer.Option(
    None, "--token-file", help="Shared token file (else $TRANSMED_FEDERATED_TOKEN)."
)


def _dp(eps: float | None, delta: float | None, clip: float | None, noise: float | None):
    from transmed.federated.privacy import DPSettings

    if eps is None and noise is None:
        if delta is not None or clip is not None:
            raise ValueError("--dp-delta/--dp-clip need --dp-epsilon or --dp-noise")
        return None
    given = {"epsilon": eps, "delta": delta, "max_grad_norm": clip, "noise_multiplier": noise}
    return DPSettings(**{k: v for k, v in given.items() if v is not None})


def _load(config: Path | None, **over):
    from transmed.federated.config import load_federated_config

    return load_federated_config(config, **over)


@app.command("simulate")
def simulate_cmd(
    out: Path = typer.Option(..., "--out", help="Federation folder (resumed if it exists)."),
    config: Path = _CONFIG,
    site: list[str] = typer.Option(
        None, "--site", help="NAME=DATA_DIR of a site (repeat); default: synthetic sites."),
    test_data: Path = typer.Option(None, "--test-data", help="Held-out set evaluated each round."),
    rounds: int = typer.Option(None, "--rounds", min=1),
    strategy: str = _STRATEGY,
    mu: float = typer.Option(None, "--mu", help="FedProx proximal μ."),
    server_lr: float = _SERVER_LR,
    server_eta: float = _SERVER_ETA,
    local_epochs: int = typer.Option(None, "--local-epochs", min=1),
    scale: int = typer.Option(1, "--site-scale", min=1, help="Synthetic sites: cases × scale."),
    seed: int = typer.Option(0, "--seed", help="Synthetic sites' seed."),
    dp_epsilon: float = _EPS, dp_delta: float = _DELTA, dp_clip: float = _CLIP,
    dp_noise: float = _NOISE,
) -> None:
    """N sites on this machine, through Flower's server and wire format (no Ray)."""
    with user_errors():
        from transmed.federated.run import simulate
        from transmed.federated.sites import default_sites, generate_site, held_out_sites

        dp = _dp(dp_epsilon, dp_delta, dp_clip, dp_noise)
        cfg = _load(config, rounds=rounds, strategy=strategy, proximal_mu=mu,
                    server_lr=server_lr, server_eta=server_eta, local_epochs=local_epochs,
                    dp=dp.model_dump() if dp else None)  # fmt: skip
        sites: dict[str, Path] = {}
        for item in site or []:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise typer.BadParameter(f"--site {item!r}: expected NAME=DATA_DIR")
            sites[name] = Path(path)
        if not sites:
            profiles = default_sites(scale)
            for p in profiles:
                typer.echo(f"site {p.name}: {p.n_cases} synthetic cases, grid {p.shape}, "
                           f"slice factor {p.slice_factor}, gamma {p.gamma}, noise {p.noise}")
                sites[p.name] = out / "data" / p.name
                generate_site(p, sites[p.name], seed)
            if test_data is None:
                test_data = out / "data" / "test"
                for p in held_out_sites(profiles):
                    generate_site(p, test_data, seed)
        state = simulate(cfg, sites, out, test_data=test_data)
        last = state.records[-1] if state.records else {}
        typer.echo(f"{state.rounds_done} rounds; global model: {state.ckpt}")
        if "eval" in last:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in last["eval"].items())
            typer.echo(f"held-out Dice: {scores}")


@app.command("server")
def server_cmd(
    out: Path = typer.Option(..., "--out", help="Federation folder (resumed if it exists)."),
    config: Path = _CONFIG,
    address: str = typer.Option("127.0.0.1:8080", "--address", help="host:port to listen on."),
    token_file: Path = _TOKEN,
    test_data: Path = typer.Option(None, "--test-data", help="Held-out set evaluated each round."),
    tls_dir: Path = typer.Option(None, "--tls-dir", help="ca.crt, server.pem, server.key."),
    rounds: int = typer.Option(None, "--rounds", min=1),
    strategy: str = _STRATEGY,
    server_lr: float = _SERVER_LR,
    server_eta: float = _SERVER_ETA,
    min_clients: int = typer.Option(None, "--min-clients", min=1),
) -> None:
    """The federation's server (Flower gRPC); sites join with `transmed federated client`."""
    with user_errors():
        from transmed.federated.run import read_token, serve

        token = read_token(token_file)
        if token is None:
            raise ValueError("the server needs a shared token: --token-file or "
                             "$TRANSMED_FEDERATED_TOKEN (≥ 16 characters)")  # fmt: skip
        host = address.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1") and tls_dir is None:
            typer.secho("warning: listening beyond loopback without --tls-dir: weights travel "
                        "unencrypted", err=True, fg=typer.colors.YELLOW)  # fmt: skip
        cfg = _load(config, rounds=rounds, strategy=strategy, server_lr=server_lr,
                    server_eta=server_eta, min_clients=min_clients)
        state = serve(cfg, out, address, token, test_data, tls_dir)
        typer.echo(f"{state.rounds_done} rounds; global model: {state.ckpt}")


@app.command("client")
def client_cmd(
    data: Path = typer.Option(..., "--data", help="This site's dataset (any layout)."),
    work: Path = typer.Option(..., "--work", help="This site's work folder."),
    config: Path = _CONFIG,
    server: str = typer.Option("127.0.0.1:8080", "--server", help="host:port of the server."),
    token_file: Path = _TOKEN,
    ca_cert: Path = typer.Option(None, "--ca-cert", help="CA certificate of a TLS server."),
    dp_epsilon: float = _EPS, dp_delta: float = _DELTA, dp_clip: float = _CLIP,
    dp_noise: float = _NOISE,
    wait: float = typer.Option(600.0, "--wait", min=1.0,
                               help="Seconds to keep retrying while the server is not up."),
) -> None:
    """Join a federation as one site; only model updates leave this machine."""
    with user_errors():
        from transmed.federated.run import join, read_token

        token = read_token(token_file)
        if token is None:
            raise ValueError("the client needs the federation's token: --token-file or "
                             "$TRANSMED_FEDERATED_TOKEN")  # fmt: skip
        cfg = _load(config)
        join(cfg, data, work, server, token, dp=_dp(dp_epsilon, dp_delta, dp_clip, dp_noise),
             ca_cert=ca_cert, max_wait_s=wait)  # fmt: skip
        typer.echo("the federation has ended")
