"""The DICOM side of the node (pynetdicom): C-ECHO, and C-STORE of MR images into storage.

Associations are refused unless the called AE title is the node's and, when
``allowed_calling_aets`` is set, the calling AE title is listed. Only MR Image Storage and
Enhanced MR Image Storage are negotiated, in uncompressed transfer syntaxes (what the reader
decodes without optional codecs; Orthanc and most PACS transcode on sending). The C-STORE
handler never raises: every outcome is a status (see :class:`~transmed.service.validation.Status`)
and one log line.
"""

from __future__ import annotations

import logging
from typing import Any

from transmed.service.assembler import StudyAssembler
from transmed.service.config import ServiceConfig
from transmed.service.keys import is_valid_uid, study_log_key
from transmed.service.metrics import Metrics
from transmed.service.storage import IncomingStore
from transmed.service.validation import (
    ACCEPTED_SOP_CLASSES,
    InstanceRefused,
    Status,
    parse_instance,
)

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
#: Uncompressed transfer syntaxes: Implicit / Explicit VR Little Endian, Deflated, Big Endian.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
)


def tune_socket(event: Any, *, opening: bool = False) -> None:
    """Send small PDUs at once and acknowledge received data at once (Linux TCP_QUICKACK).

    A C-STORE is several small PDUs. A sender with Nagle's algorithm on (pynetdicom, and DCMTK
    / Orthanc unless TCP_NODELAY=1 is set for them) holds each one until the previous is
    acknowledged, and Linux delays ACKs by up to 40 ms: about 20 instances/s. Quick ACKs from
    this side (re-armed on every receive: the kernel drops back to delayed ACKs) lift that
    cap whatever the sender does; TCP_NODELAY does the same for what this side sends.
    """
    import socket

    try:
        sock = event.assoc.dul.socket.socket
        if opening:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        quickack = getattr(socket, "TCP_QUICKACK", None)
        if quickack is not None:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
    except (AttributeError, OSError):  # not a TCP socket, or already closed
        pass


def _calling(event: Any) -> str:
    """The peer's calling AE title (from the request: set before negotiation completes)."""
    try:
        requestor = event.assoc.requestor
        primitive = getattr(requestor, "primitive", None)
        title = getattr(primitive, "calling_ae_title", None) or requestor.ae_title
        return str(title).strip()
    except Exception:
        return "?"


class DicomListener:
    """The pynetdicom AE serving C-ECHO and C-STORE; ``dicom_port=0`` binds a free port."""

    def __init__(
        self,
        config: ServiceConfig,
        store: IncomingStore,
        assembler: StudyAssembler,
        metrics: Metrics,
    ) -> None:
        self.config, self.store, self.assembler, self.metrics = config, store, assembler, metrics
        self._server: Any = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(VERIFICATION)
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        ae.require_called_aet = True
        if self.config.allowed_calling_aets:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.maximum_associations = self.config.max_associations
        t = self.config.network_timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = t
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_DATA_RECV, tune_socket),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        self._server = ae.start_server(
            (self.config.bind_host, self.config.dicom_port), block=False, evt_handlers=handlers
        )
        log.info(
            "DICOM: AE %s listening on %s:%d",
            self.config.ae_title,
            self.config.bind_host,
            self.port,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # --- handlers (pynetdicom calls them from the association's thread) ---

    def _on_requested(self, event: Any) -> None:
        calling = _calling(event)
        allowed = self.config.allowed_calling_aets
        if allowed and calling not in allowed:
            log.warning(
                "DICOM: association from AE %r at %s refused: calling AE not allowed",
                calling,
                event.assoc.requestor.address,
            )

    def _on_accepted(self, event: Any) -> None:
        self.metrics.incr("associations_accepted")
        log.debug(
            "DICOM: association from AE %r at %s accepted",
            _calling(event),
            event.assoc.requestor.address,
        )

    def _on_open(self, event: Any) -> None:
        tune_socket(event, opening=True)

    def _on_close(self, event: Any) -> None:
        self.assembler.association_closed(id(event.assoc))

    def _on_echo(self, event: Any) -> int:
        log.info("DICOM: C-ECHO from AE %r", _calling(event))
        return Status.SUCCESS

    def _on_store(self, event: Any) -> int:
        study_key = "unknown"
        try:
            raw = event.encoded_dataset(include_meta=True)
            requested = event.request.AffectedSOPInstanceUID
            ds = parse_instance(
                raw,
                context_sop_class=str(event.context.abstract_syntax),
                request_sop_instance=str(requested) if requested else None,
                limits=self.config.limits,
            )
            study_uid = str(ds.StudyInstanceUID)
            study_key = study_log_key(study_uid) if is_valid_uid(study_uid) else "unknown"
            self.store.put(ds, raw)
            self.assembler.instance_received(study_uid, id(event.assoc))
            self.metrics.incr("instances_received")
            return Status.SUCCESS
        except InstanceRefused as exc:
            self.metrics.incr("instances_refused")
            log.warning(
                "DICOM: C-STORE from AE %r refused with 0x%04X (study %s): %s",
                _calling(event),
                exc.status,
                study_key,
                exc.reason,
            )
            return exc.status
        except Exception as exc:  # the node's own failure; the peer may retry
            self.metrics.incr("instances_refused")
            log.error(
                "DICOM: C-STORE from AE %r failed in the node (study %s): %s",
                _calling(event),
                study_key,
                type(exc).__name__,
            )
            return Status.PROCESSING_FAILURE
