"""Health and metrics over HTTP (stdlib ``ThreadingHTTPServer``, loopback by default).

``GET /health``: 200 and ``{"status": "ok", ...}`` while the node's threads run, 503 and
``"degraded"`` otherwise. ``GET /metrics``: JSON counters, gauges and latency percentiles;
``/metrics?format=prometheus`` (or ``Accept: text/plain``) gives the Prometheus text format.
The endpoints serve counts only, never study or patient data; with a token configured,
``/metrics`` needs ``Authorization: Bearer <token>`` (``/health`` stays open for probes).

A client that sends nothing is dropped after ``read_timeout_s``, and at most
``max_connections`` are served at once (one thread each); more are closed at once, so idle
connections cannot pile up descriptors and threads. A client that disconnects mid-answer is one
debug line, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)


class StatusServer:
    """The HTTP endpoint; ``port=0`` binds a free port (read it from :attr:`port`).

    Args:
        host, port: where to listen.
        health: returns ``(healthy, details)``.
        metrics: returns the JSON-able metrics snapshot.
        prometheus: returns the Prometheus text.
        token: when set, ``/metrics`` requires it as a bearer token.
        max_connections: connections served at once; more are closed at once.
        read_timeout_s: a connection silent this long is closed.
    """

    def __init__(
        self,
        host: str,
        port: int,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        metrics: Callable[[], dict[str, Any]],
        prometheus: Callable[[], str],
        token: str | None = None,
        *,
        max_connections: int = 16,
        read_timeout_s: float = 5.0,
    ) -> None:
        handler = _make_handler(health, metrics, prometheus, token, read_timeout_s)
        self._server = _BoundedServer((host, port), handler, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="transmed-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)


class _BoundedServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with at most ``max_connections`` handler threads, quiet about
    clients that go away."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        self.refused = 0
        self._last_warning = 0.0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            now = time.monotonic()
            if now - self._last_warning > 60.0:  # one line a minute, not one per connection
                self._last_warning = now
                log.warning(
                    "http: %d connections open, the cap: closing new ones (%d so far)",
                    self.max_connections,
                    self.refused,
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("http: client went away (%s)", type(exc).__name__)
        else:
            log.error("http: request failed: %s", type(exc).__name__)


def _make_handler(
    health: Callable[[], tuple[bool, dict[str, Any]]],
    metrics: Callable[[], dict[str, Any]],
    prometheus: Callable[[], str],
    token: str | None,
    read_timeout_s: float = 5.0,
) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "transmed"
        sys_version = ""
        timeout = read_timeout_s  # StreamRequestHandler: the socket's timeout

        def _send(self, code: int, body: str, content_type: str) -> None:
            data = body.encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, indent=1) + "\n", "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            try:
                if url.path == "/health":
                    ok, details = health()
                    self._json(
                        200 if ok else 503, {"status": "ok" if ok else "degraded", **details}
                    )
                elif url.path == "/metrics" and not self._authorised():
                    self._json(401, {"error": "a bearer token is required"})
                elif url.path == "/metrics":
                    fmt = parse_qs(url.query).get("format", [""])[0]
                    accept = self.headers.get("Accept", "")
                    if fmt == "prometheus" or (not fmt and accept.startswith("text/plain")):
                        self._send(200, prometheus(), "text/plain; version=0.0.4")
                    else:
                        self._json(200, metrics())
                else:
                    self._json(404, {"error": "not found", "endpoints": ["/health", "/metrics"]})
            except (ConnectionError, TimeoutError):  # the client went away: nothing to answer
                log.debug("http: client went away during %s", url.path[:64])
            except Exception as exc:  # never take the server down
                log.error("http: %s failed: %s", url.path[:64], type(exc).__name__)
                self._json(500, {"error": "internal error"})

        def _authorised(self) -> bool:
            if expected is None:
                return True
            given = self.headers.get("Authorization", "").encode()
            return hmac.compare_digest(given, expected)

        def _not_allowed(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http: %s", format % args)

    return Handler
