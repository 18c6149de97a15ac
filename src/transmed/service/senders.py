"""How a SEG reaches the PACS: C-STORE (pynetdicom SCU) or DICOMweb STOW-RS (dicomweb-client).

Each sender makes one attempt and raises :class:`~transmed.service.outbox.DeliveryError` on
failure, saying whether retrying can help; the outbox owns retries and backoff (the libraries'
own retrying is switched off so the two do not multiply). Credentials are never logged.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from transmed.service.config import DicomDestination, DicomWebDestination
from transmed.service.outbox import DeliveryError, Sender

#: C-STORE statuses that mean "stored" (success, and the warnings PS3.4 B.2.3 defines).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
#: HTTP statuses after which resending the same SEG cannot succeed.
_HTTP_PERMANENT = {400, 409, 413, 415, 422}


class DicomStoreSender:
    """C-STORE to a DICOM peer, one association per SEG."""

    def __init__(self, dest: DicomDestination, calling_ae_title: str) -> None:
        self.dest = dest
        self.calling = calling_ae_title

    def describe(self) -> str:
        return self.dest.describe()

    def send(self, path: Path) -> None:
        from pydicom import dcmread
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, evt

        from transmed.service.scp import tune_socket

        ds = dcmread(path)
        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.dest.timeout_s
        syntaxes = list(
            dict.fromkeys(
                [ds.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
        )
        ae.add_requested_context(ds.SOPClassUID, syntaxes)
        assoc = ae.associate(
            self.dest.host,
            self.dest.port,
            ae_title=self.dest.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, partial(tune_socket, opening=True))],
        )
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
            raise DeliveryError(f"association {why}")
        try:
            status = assoc.send_c_store(ds)
        except Exception as exc:  # connection lost mid-transfer
            raise DeliveryError(f"C-STORE interrupted ({type(exc).__name__})") from None
        finally:
            if assoc.is_established:
                assoc.release()
        code = int(status.Status) if status and "Status" in status else None
        if code is None:
            raise DeliveryError("no C-STORE response (timeout or connection lost)")
        if code in _STORED:
            return
        permanent = not (0xA700 <= code <= 0xA7FF or code in (0x0110, 0x0124))
        raise DeliveryError(f"C-STORE status 0x{code:04X}", permanent=permanent)


class StowSender:
    """DICOMweb STOW-RS to ``<url>/studies``, with basic auth or a bearer token."""

    def __init__(self, dest: DicomWebDestination) -> None:
        self.dest = dest
        self._client = None

    def describe(self) -> str:
        return self.dest.describe()

    def _make_client(self):  # type: ignore[no-untyped-def]
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        if self.dest.username and self.dest.password is not None:
            session.auth = (self.dest.username, self.dest.password.get_secret_value())
        if self.dest.token is not None:
            session.headers["Authorization"] = f"Bearer {self.dest.token.get_secret_value()}"
        client = DICOMwebClient(url=self.dest.url, session=session, timeout=self.dest.timeout_s)
        client.set_http_retry_params(retry=False)
        return client

    def send(self, path: Path) -> None:
        import requests
        from pydicom import dcmread

        if self._client is None:
            self._client = self._make_client()
        ds = dcmread(path)
        try:
            response = self._client.store_instances([ds])
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            raise DeliveryError(f"HTTP {code}", permanent=code in _HTTP_PERMANENT) from None
        except requests.RequestException as exc:
            raise DeliveryError(f"{type(exc).__name__} (destination unreachable?)") from None
        failed = getattr(response, "FailedSOPSequence", None)
        if failed:
            reason = failed[0].get("FailureReason", "?")
            raise DeliveryError(f"STOW-RS refused the SEG (FailureReason {reason})", permanent=True)


def make_sender(dest: DicomDestination | DicomWebDestination, calling_ae_title: str) -> Sender:
    """The sender for a configured destination."""
    if isinstance(dest, DicomDestination):
        return DicomStoreSender(dest, calling_ae_title)
    return StowSender(dest)
