"""The HTTP endpoint: health, metrics (JSON and Prometheus), loopback, read-only."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest
from pydicom.uid import generate_uid
from service_helpers import (
    FakeSender,
    fake_predict,
    make_config,
    mr_dataset,
    store_datasets,
    wait_until,
)

from transmed.service.metrics import Metrics, percentile
from transmed.service.service import DicomNode


def _get(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


@pytest.fixture
def node(tmp_path):
    n = DicomNode(
        make_config(tmp_path), predictor=object(), sender=FakeSender(), predict_fn=fake_predict
    ).start()
    yield n
    n.stop()


def test_health_and_metrics(node):
    base = f"http://127.0.0.1:{node.http_port}"
    assert node.http._server.server_address[0] == "127.0.0.1"
    status, ctype, body = _get(base + "/health")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body)["status"] == "ok"

    study = generate_uid()
    series = generate_uid()
    store_datasets(
        node.dicom_port, [mr_dataset(study_uid=study, series_uid=series, k=k) for k in range(3)]
    )
    c = node.metrics.counters
    wait_until(lambda: c["seg_delivered"] == 1 and c["studies_processed"] == 1)
    status, _, body = _get(base + "/metrics")
    m = json.loads(body)
    assert status == 200
    assert m["instances_received"] == 3 and m["studies_received"] == 1
    assert m["studies_processed"] == 1 and m["studies_failed"] == 0
    assert m["queue_length"] == 0 and m["queue_capacity"] == 2 and m["outbox_pending"] == 0
    for name in ("processing_s", "turnaround_s", "total_s"):
        lat = m["latency"][name]
        assert lat["count"] == 1 and lat["p50"] <= lat["p90"] <= lat["p99"]
    assert m["latency"]["total_s"]["p50"] >= 0.3  # includes the quiet period

    for url, accept in (
        (base + "/metrics?format=prometheus", None),
        (base + "/metrics", "text/plain"),
    ):
        status, ctype, text = _get(url, accept)
        assert status == 200 and ctype.startswith("text/plain")
        assert "transmed_studies_processed_total 1" in text
        assert 'transmed_latency_seconds{stage="processing",quantile="0.5"}' in text


def test_unknown_paths_and_methods(node):
    base = f"http://127.0.0.1:{node.http_port}"
    assert _get(base + "/studies")[0] == 404
    req = urllib.request.Request(base + "/health", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 405


def test_health_degrades_when_a_thread_dies(node):
    node.worker.stop()
    status, _, body = _get(f"http://127.0.0.1:{node.http_port}/health")
    assert status == 503
    assert json.loads(body)["threads"]["worker"] is False


def test_percentiles():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    m = Metrics(window=3)
    for v in (1.0, 2.0, 3.0, 100.0):
        m.observe("processing_s", v)
    assert m.snapshot()["latency"]["processing_s"]["count"] == 3  # a bounded window


def test_metrics_token(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_HTTP_TOKEN", "t0ken-xyz")
    cfg = make_config(tmp_path, http_token_env="TEST_HTTP_TOKEN")
    assert "t0ken-xyz" not in repr(cfg)
    with DicomNode(cfg, predictor=object(), sender=FakeSender(), predict_fn=fake_predict) as n:
        base = f"http://127.0.0.1:{n.http_port}"
        assert _get(base + "/metrics")[0] == 401
        req = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer nope"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req, timeout=5)
        req = urllib.request.Request(
            base + "/metrics", headers={"Authorization": "Bearer t0ken-xyz"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        assert _get(base + "/health")[0] == 200  # probes need no token


def _status_server(health=None, **kwargs):
    from transmed.service.http import StatusServer

    server = StatusServer(
        "127.0.0.1",
        0,
        health or (lambda: (True, {})),
        lambda: {},
        lambda: "",
        **kwargs,
    )
    server.start()
    return server


def _closed_within(sock, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_connections_are_capped_and_timed_out():
    """1,050 half-open connections once took the process past 1,024 descriptors."""
    import socket
    import threading

    server = _status_server(max_connections=4, read_timeout_s=0.5)
    before = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(12)]
    try:
        # beyond the cap: closed at once; within it: closed after the read timeout
        assert sum(_closed_within(s, 0.3) for s in socks) >= 8
        assert threading.active_count() - before <= 4
        assert all(_closed_within(s, 3.0) for s in socks)
        assert _get(f"http://127.0.0.1:{server.port}/health")[0] == 200
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_client_disconnect_is_not_a_traceback(capfd, caplog):
    """A probe that hangs up before the answer: no traceback on stderr, no error logged."""
    import socket
    import struct
    import time

    def slow_health():
        time.sleep(0.4)
        return True, {}

    server = _status_server(slow_health)
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # a reset, while the server is still answering
        time.sleep(1.0)
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
