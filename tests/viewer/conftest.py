"""Fixtures for the viewer tests (helpers in ``viewer_helpers``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from viewer_helpers import CHROMIUM, CHROMIUM_ARGS, RunningServer, require_browser


@pytest.fixture
def server_factory() -> Iterator:
    servers: list[RunningServer] = []

    def start(path: Path, **kwargs) -> RunningServer:
        servers.append(RunningServer(path, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def synth_dicom(tmp_path_factory):
    """A synthetic 4-series DICOM study (32 × 32 × 20), written once; copy it before use."""
    from transmed.data.synth.dicom import write_dicom_study

    return write_dicom_study(tmp_path_factory.mktemp("synth") / "study", shape=(32, 32, 20))


@pytest.fixture(scope="module")
def browser() -> Iterator:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


