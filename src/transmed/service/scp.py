"""The DICOM side of the node (pynetdicom): C-ECHO, and C-STORE of MR images into storage.

Associations are refused unless the called AE title is the node's and, when
``allowed_calling_aets`` is set, the calling AE title is listed. Only MR Image Storage and
Enhanced MR Image Storage are negotiated, in uncompressed transfer syntaxes (what the reader
decodes without optional codecs; Orthanc and most PACS transcode on sending). Deflated Explicit
VR Little Endian is not negotiated: pydicom inflates a deflated data set whole, so a few hundred
KB on the wire could become gigabytes in memory past ``max_instance_bytes``. Every refused
presentation context is one log line with its reason. The bytes a peer sends are counted as
they arrive (:class:`ReceiveBudget`): an association whose data set outgrows
``max_instance_bytes``, or that would take the node past ``max_receiving_bytes`` across all
associations, is cut before it is held in memory. The C-STORE handler never raises: every
outcome is a status (see :class:`~transmed.service.validation.Status`) and one log line.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from transmed.service.assembler import StudyAssembler
from transmed.service.config import ServiceConfig
from transmed.service.guards import ReceiveBudget, install_one_line_errors, use_poll_readiness
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
#: The listener's self-check gives up after this many times its network timeout.
SELF_CHECK_BOUND = 3.0
#: Uncompressed transfer syntaxes: Implicit / Explicit VR Little Endian, Big Endian. Not
#: Deflated (1.2.840.10008.1.2.1.99): its inflated size is unknown until pydicom has inflated it.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
)
#: A PDU's framing and a C-STORE's command set come on top of the data set's bytes.
_RECEIVE_SLACK = 64 * 1024


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
    """The pynetdicom AE serving C-ECHO and C-STORE; ``dicom_port=0`` binds a free port.

    :meth:`self_check` opens a loopback association to the listener (C-ECHO, or a rejection
    when an allow-list keeps the node's own AE title out): ``/health`` reports it, so a listener
    that accepts connections but cannot serve them is seen.
    """

    def __init__(
        self,
        config: ServiceConfig,
        store: IncomingStore,
        assembler: StudyAssembler,
        metrics: Metrics,
    ) -> None:
        self.config, self.store, self.assembler, self.metrics = config, store, assembler, metrics
        self._server: Any = None
        limits = config.limits
        self.receive_budget = ReceiveBudget(
            limits.max_receiving_bytes, limits.max_instance_bytes + _RECEIVE_SLACK
        )
        self._cut: set[int] = set()  # associations cut for the receive budget
        self._check_lock = threading.Lock()
        self._last_check: tuple[float, bool, str] | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        from pynetdicom import AE, evt

        use_poll_readiness()
        install_one_line_errors()
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
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_DATA_RECV, self._on_data),
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

    def self_check(self, timeout: float = 3.0, max_age_s: float = 5.0) -> tuple[bool, str]:
        """Whether the listener answers an association on loopback (cached ``max_age_s``).

        Accepted and echoed, or rejected (the allow-list does not name the node's own AE
        title): the listener serves. Aborted or no answer: it does not.
        """
        with self._check_lock:
            now = time.monotonic()
            if self._last_check is not None and now - self._last_check[0] < max_age_s:
                return self._last_check[1], self._last_check[2]
            ok, detail = self._bounded_check(timeout)
            self._last_check = (time.monotonic(), ok, detail)
            return ok, detail

    def _bounded_check(self, timeout: float) -> tuple[bool, str]:
        """:meth:`_check` with a wall-clock bound: pynetdicom's own timeouts do not cover every
        way an association can stall (seen: a transport event in the idle state left the
        requestor waiting), and /health must answer whatever the listener does."""
        out: list[tuple[bool, str]] = []
        worker = threading.Thread(target=lambda: out.append(self._check(timeout)),
                                  name="transmed-self-check", daemon=True)  # fmt: skip
        worker.start()
        worker.join(SELF_CHECK_BOUND * timeout)
        if not out:
            return False, f"self-check unanswered within {SELF_CHECK_BOUND * timeout:.0f} s"
        return out[0]

    def _check(self, timeout: float) -> tuple[bool, str]:
        from pynetdicom import AE

        if self._server is None:
            return False, "listener stopped"
        host = self.config.bind_host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        ae = AE(ae_title=self.config.ae_title)
        ae.add_requested_context(VERIFICATION)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        try:
            assoc = ae.associate(host, self.port, ae_title=self.config.ae_title)
        except Exception as exc:  # socket errors: the listener is not there
            return False, f"self-check association failed: {type(exc).__name__}"
        if assoc.is_rejected:
            return True, "answered (self-check association rejected by the allow-list)"
        if not assoc.is_established:
            return False, "self-check association aborted or unanswered"
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if status is None or int(getattr(status, "Status", -1)) != 0:
            return False, "self-check C-ECHO unanswered"
        return True, "C-ECHO answered"

    def _is_self_check(self, event: Any) -> bool:
        try:
            address = str(event.assoc.requestor.address)
        except Exception:
            return False
        return _calling(event) == self.config.ae_title and address in ("127.0.0.1", "::1")

    def _on_data(self, event: Any) -> None:
        tune_socket(event)
        key = id(event.assoc)
        if key in self._cut:
            return
        reason = self.receive_budget.received(key, len(event.data))
        if reason is None:
            return
        self._cut.add(key)
        self.metrics.incr("associations_cut")
        log.warning(
            "DICOM: association from AE %r at %s cut while receiving: %s",
            _calling(event),
            event.assoc.requestor.address,
            reason,
        )
        try:  # the reactor reads end-of-stream next and aborts the association
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass

    def _on_rejected(self, event: Any) -> None:
        if self._is_self_check(event):
            return
        self.metrics.incr("associations_rejected")
        reason = _refused_contexts(event.assoc)
        if reason and not event.assoc.accepted_contexts:
            log.warning(
                "DICOM: association from AE %r at %s refused: no acceptable presentation "
                "context (%s)",
                _calling(event),
                event.assoc.requestor.address,
                reason,
            )

    def _on_requested(self, event: Any) -> None:
        calling = _calling(event)
        allowed = self.config.allowed_calling_aets
        if allowed and calling not in allowed and not self._is_self_check(event):
            log.warning(
                "DICOM: association from AE %r at %s refused: calling AE not allowed",
                calling,
                event.assoc.requestor.address,
            )

    def _on_accepted(self, event: Any) -> None:
        if self._is_self_check(event):
            return
        self.metrics.incr("associations_accepted")
        refused = _refused_contexts(event.assoc)
        if refused and not event.assoc.accepted_contexts:
            log.warning(
                "DICOM: association from AE %r at %s has no acceptable presentation context (%s)",
                _calling(event),
                event.assoc.requestor.address,
                refused,
            )
        elif refused:
            log.info(
                "DICOM: association from AE %r: presentation contexts refused (%s)",
                _calling(event),
                refused,
            )
        log.debug(
            "DICOM: association from AE %r at %s accepted",
            _calling(event),
            event.assoc.requestor.address,
        )

    def _on_open(self, event: Any) -> None:
        tune_socket(event, opening=True)

    def _on_close(self, event: Any) -> None:
        key = id(event.assoc)
        self.receive_budget.handed_over(key)
        self._cut.discard(key)
        self.assembler.association_closed(key)

    def _on_echo(self, event: Any) -> int:
        kind = type(getattr(event, "request", None)).__name__.replace("_", "-")
        if kind != "C-ECHO":  # pynetdicom answers any request on a Verification context so
            log.warning(
                "DICOM: %s from AE %r on a Verification context: not served (answered as a C-ECHO)",
                kind,
                _calling(event),
            )
        elif not self._is_self_check(event):
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
        finally:
            self.receive_budget.handed_over(id(event.assoc))


_CONTEXT_RESULTS = {
    1: "refused by the node",
    2: "refused (no reason given)",
    3: "abstract syntax not supported",
    4: "transfer syntax not supported",
}


def _refused_contexts(assoc: Any) -> str:
    """The refused presentation contexts of ``assoc`` and why, in one phrase."""
    parts = []
    try:
        contexts = list(assoc.rejected_contexts)
    except Exception:
        return ""
    for cx in contexts[:8]:
        syntaxes = ", ".join(getattr(ts, "name", str(ts)) for ts in cx.transfer_syntax[:3])
        name = getattr(cx.abstract_syntax, "name", str(cx.abstract_syntax))
        why = _CONTEXT_RESULTS.get(getattr(cx, "result", None), "refused")
        parts.append(f"{name} [{syntaxes}]: {why}")
    if len(contexts) > 8:
        parts.append(f"and {len(contexts) - 8} more")
    return "; ".join(parts)
