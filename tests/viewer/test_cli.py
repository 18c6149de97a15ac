"""``transmed view``: the command itself (arguments, printed URL, bind address, bad input)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import uvicorn
from typer.testing import CliRunner
from viewer_helpers import make_case

from transmed.cli import app
from transmed.viewer.cli import is_loopback

URL = re.compile(r"Open (http://(\S+?):(\d+)/\?token=([A-Za-z0-9_\-]{20,}))(\S*)")


@pytest.fixture
def no_serving(monkeypatch):
    """uvicorn returns at once; the sockets it was given are recorded (and closed)."""
    bound: list = []

    def run(self, sockets=None):
        bound.extend(s.getsockname() for s in sockets or [])
        for s in sockets or []:
            s.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return bound


def test_view_prints_a_loopback_url_with_a_token(tmp_path, no_serving) -> None:
    d, _ = make_case(tmp_path)
    res = CliRunner().invoke(app, ["view", str(d), "--case", "Case_001"])
    assert res.exit_code == 0, res.output
    m = URL.search(res.output)
    assert m, res.output
    assert m[2] == "127.0.0.1" and m[5] == "&case=Case_001"
    assert no_serving == [("127.0.0.1", int(m[3]))]  # the printed port is the bound one
    again = URL.search(CliRunner().invoke(app, ["view", str(d)]).output)
    assert again and again[4] != m[4] and again[5] == ""  # a fresh random token each start


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_a_non_loopback_bind_needs_allow_remote(tmp_path, no_serving, host) -> None:
    d, _ = make_case(tmp_path)
    res = CliRunner().invoke(app, ["view", str(d), "--host", host])
    assert res.exit_code == 2 and "--allow-remote" in res.output and "Traceback" not in res.output
    assert no_serving == []


def test_allow_remote_binds_where_asked(tmp_path, no_serving) -> None:
    d, _ = make_case(tmp_path)
    res = CliRunner().invoke(app, ["view", str(d), "--host", "0.0.0.0", "--allow-remote"])
    assert res.exit_code == 0, res.output
    assert [addr for addr, _ in no_serving] == ["0.0.0.0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["{missing}"], "not a folder"), (["{empty}"], "no case to view"),
     (["{case}", "--case", "Nope"], "--case Nope: no such case")],
)  # fmt: skip
def test_bad_input_is_one_clear_line(tmp_path, no_serving, args, message) -> None:
    d, _ = make_case(tmp_path / "c")
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "case": d}
    res = CliRunner().invoke(app, ["view", *[a.format(**paths) for a in args]])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert message in res.output and no_serving == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False), ("localhost.evil", False)],
)  # fmt: skip
def test_is_loopback(host, loopback) -> None:
    assert is_loopback(host) is loopback


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_command_serves_the_page_behind_its_token(tmp_path) -> None:
    """The real command in a subprocess: the printed URL opens; without the token, 403."""
    d, _ = make_case(tmp_path)
    exe = [sys.executable, "-c", "from transmed.cli import app; app()", "view", str(d)]
    proc = subprocess.Popen(exe, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        m = URL.search(line)
        assert m, line + proc.stderr.read()  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{m[3]}"
        deadline = time.time() + 30
        while True:  # uvicorn starts serving a moment after the line is printed
            try:
                status = _status(m[1])
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        assert status == 200
        assert _status(f"{base}/") == 403
        assert _status(f"{base}/static/viewer.js") == 403
        assert _status(f"{base}/api/cases?token=wrong") == 403
        assert _status(f"{base}/api/cases?token={m[4]}") == 200
    finally:
        proc.terminate()
        proc.wait(10)
