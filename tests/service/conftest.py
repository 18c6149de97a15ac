"""Fixtures of the service tests: a private Orthanc PACS, the tiny model's predictor."""

from __future__ import annotations

import pytest
from service_helpers import require_orthanc

from transmed.service.orthanc import OrthancServer, free_port


@pytest.fixture(scope="session")
def pacs(tmp_path_factory):
    """A private Orthanc (auth on, loopback, free ports) that knows the node as ``transmed``.

    The node's DICOM port is chosen here (``pacs.node_port``), so Orthanc's configuration can
    register it; each test starts its own node on that port.
    """
    require_orthanc()
    node_port = free_port()
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc"), {"transmed": ("TRANSMED", "127.0.0.1", node_port)}
    )
    server.node_port = node_port  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_predictor(tiny_checkpoint):
    """The tiny untrained model, loaded once for the session (plumbing, not quality)."""
    from transmed.inference.predictor import Predictor

    return Predictor.from_path(tiny_checkpoint)
