"""The senders: what counts as delivered, what is retried, what is given up."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydicom.uid import MRImageStorage
from service_helpers import mr_dataset

from transmed.service.config import DicomDestination, DicomWebDestination
from transmed.service.orthanc import free_port
from transmed.service.outbox import DeliveryError
from transmed.service.senders import DicomStoreSender, StowSender


@pytest.fixture
def instance(tmp_path):
    path = tmp_path / "seg.dcm"
    mr_dataset().save_as(path, enforce_file_format=True)
    return path


def _scp(status: int):
    from pynetdicom import AE, evt

    ae = AE("PACS")
    ae.add_supported_context(MRImageStorage)
    return ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: status)]
    )


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, "ok"),
        (0xB000, "ok"),
        (0xA700, "retry"),
        (0x0110, "retry"),
        (0xA900, "give up"),
        (0xC000, "give up"),
    ],
)
def test_c_store_statuses(instance, status, outcome):
    server = _scp(status)
    try:
        port = server.server_address[1]
        dest = DicomDestination(type="dicom", ae_title="PACS", host="127.0.0.1", port=port)
        sender = DicomStoreSender(dest, "TRANSMED")
        if outcome == "ok":
            sender.send(instance)
        else:
            with pytest.raises(DeliveryError) as err:
                sender.send(instance)
            assert err.value.permanent == (outcome == "give up")
            assert f"0x{status:04X}" in str(err.value)
    finally:
        server.shutdown()


def test_c_store_to_nobody_or_wrong_ae_is_retried(instance):
    dest = DicomDestination(
        type="dicom", ae_title="PACS", host="127.0.0.1", port=free_port(), timeout_s=2
    )
    with pytest.raises(DeliveryError) as err:
        DicomStoreSender(dest, "TRANSMED").send(instance)
    assert not err.value.permanent
    server = _scp(0)
    try:
        wrong = dest.model_copy(update={"port": server.server_address[1], "ae_title": "OTHER"})
        server.ae.require_called_aet = True
        with pytest.raises(DeliveryError, match="rejected") as err:
            DicomStoreSender(wrong, "TRANSMED").send(instance)
        assert not err.value.permanent
    finally:
        server.shutdown()


class _Stub(BaseHTTPRequestHandler):
    code = 503
    seen_auth: list[str] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Stub.seen_auth.append(self.headers.get("Authorization", ""))
        self.send_response(self.code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("code", "permanent"), [(503, False), (401, False), (400, True), (409, True)]
)
def test_stow_http_errors(instance, code, permanent):
    _Stub.code = code
    _Stub.seen_auth = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        dest = DicomWebDestination(type="dicomweb", url=url, token="s3cret-token", timeout_s=5)
        with pytest.raises(DeliveryError) as err:
            StowSender(dest).send(instance)
        assert err.value.permanent == permanent
        assert str(code) in str(err.value) and "s3cret" not in str(err.value)
        assert _Stub.seen_auth == ["Bearer s3cret-token"]  # one attempt: no library retries
    finally:
        server.shutdown()
        server.server_close()


def test_stow_unreachable_is_retried(instance):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    dest = DicomWebDestination(type="dicomweb", url=url, timeout_s=2)
    with pytest.raises(DeliveryError) as err:
        StowSender(dest).send(instance)
    assert not err.value.permanent
