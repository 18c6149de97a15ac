"""A real deployment on loopback: `transmed federated server` and two `client` processes over
Flower's gRPC transport, with the shared token; a client without the token is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transmed.training.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, log: Path) -> subprocess.Popen:
    """A ``transmed federated`` process writing to ``log``: a file, not a pipe (the test used
    to wait on the server while nobody read the clients' pipes, a deadlock once a client wrote
    64 KiB)."""
    with open(log, "w") as fh:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "transmed.cli", "federated", *args],
                                env=ENV, stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.mark.slow
def test_server_and_two_clients_over_grpc(tiny_sites, tiny_train, tmp_path: Path) -> None:
    """The hang of 2026-11-30 (server waiting past 240 s), most likely: a client gave up after
    Flower's default 5 retries (~30 s) while the server was still importing on a loaded
    machine, and the server waited for it forever. Clients now retry for ``--wait`` seconds,
    and a client that exits ends the test at once instead of a silent wait."""
    cfg = tmp_path / "fed.json"
    cfg.write_text(json.dumps({"train": tiny_train, "rounds": 2, "min_clients": 2}))
    token = tmp_path / "token"
    token.write_text("a-long-enough-shared-secret\n")
    addr = f"127.0.0.1:{_free_port()}"
    logs = [tmp_path / f"{n}.log" for n in ("server", "A", "B")]
    # the sites start first: they must wait for the server, not give up
    clients = [_cli("client", "--data", str(tiny_sites[n]), "--work", str(tmp_path / n),
                    "--config", str(cfg), "--server", addr, "--token-file", str(token),
                    log=log) for n, log in zip(("A", "B"), logs[1:], strict=True)]  # fmt: skip
    time.sleep(2)
    server = _cli("server", "--out", str(tmp_path / "fed"), "--config", str(cfg),
                  "--address", addr, "--token-file", str(token), log=logs[0])  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        # a client that gave up (e.g. its connection retries ran out before the server was
        # up) would leave the server waiting for it forever: stop at once, with the logs
        while server.poll() is None and time.monotonic() < deadline:
            if any(c.poll() not in (None, 0) for c in clients):
                break
            time.sleep(0.5)
        for c in clients:
            c.wait(timeout=max(1.0, min(60.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in (server, *clients):
            if p.poll() is None:
                p.kill()
                p.wait()
    out, a, b = (log.read_text() for log in logs)
    assert server.returncode == 0, out[-3000:] + a[-1000:] + b[-1000:]  # -9: killed at 240 s
    assert all(c.returncode == 0 for c in clients), a[-2000:] + b[-2000:]
    ckpt = load_checkpoint(tmp_path / "fed" / "checkpoints" / "global.pt")
    assert ckpt["round"] == 2
    rounds = json.loads((tmp_path / "fed" / "rounds.json").read_text())
    assert all(len(r["sites"]) == 2 and not r["left_out"] for r in rounds)


def test_server_and_client_refuse_to_start_without_a_token(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from transmed.cli import app

    monkeypatch.delenv("TRANSMED_FEDERATED_TOKEN", raising=False)
    res = CliRunner().invoke(app, ["federated", "server", "--out", str(tmp_path / "fed")])
    assert res.exit_code == 2 and "needs a shared token" in res.output
    short = tmp_path / "short"
    short.write_text("abc\n")
    res = CliRunner().invoke(app, ["federated", "client", "--data", str(tmp_path), "--work",
                                   str(tmp_path / "w"), "--token-file", str(short)])  # fmt: skip
    assert res.exit_code == 2 and "at least 16 characters" in res.output


def test_flower_telemetry_is_off() -> None:
    import transmed.federated  # noqa: F401

    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"


def test_a_client_waits_for_a_server_that_is_not_up_yet() -> None:
    """Flower's gRPC-bidi ``start_client`` fails at once on a closed port (its retry settings
    are unused there), so ``join`` waits for the server itself before starting Flower."""
    import threading

    from transmed.federated.run import wait_for_server

    port = _free_port()
    with pytest.raises(ConnectionError, match="did not answer within 0.5 s"):
        wait_for_server(f"127.0.0.1:{port}", 0.5, interval_s=0.1)
    listener = socket.socket()

    def late_server() -> None:
        time.sleep(0.5)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    t = threading.Thread(target=late_server)
    t.start()
    try:
        t0 = time.monotonic()
        wait_for_server(f"127.0.0.1:{port}", 30, interval_s=0.1)
        assert 0.4 < time.monotonic() - t0 < 10
    finally:
        t.join()
        listener.close()
