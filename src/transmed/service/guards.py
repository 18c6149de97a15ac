"""Guards around pynetdicom that the node needs under hostile input and load.

- :class:`ReceiveBudget`: bytes peers have sent that are not yet handled, per association and
  across all of them. pynetdicom holds a C-STORE's data set in memory until its last fragment;
  the node counts every received PDU (``EVT_DATA_RECV``) and cuts an association before its
  data set outgrows ``max_instance_bytes`` or the node's total outgrows ``max_receiving_bytes``.
- :func:`use_poll_readiness`: pynetdicom asks ``select.select`` whether an association's socket
  has data. ``select`` cannot watch descriptors ≥ 1,024 (FD_SETSIZE): past that, every
  association was aborted in silence. ``poll`` has no such limit.
- :func:`raise_fd_limit`: the soft RLIMIT_NOFILE raised towards the hard limit at start-up.
- :class:`OneLineErrors`: pynetdicom logs a failed DIMSE request (for example a C-FIND on a
  Verification context) with a full traceback; the node logs one line with the reason.
"""

from __future__ import annotations

import logging
import select
import threading

log = logging.getLogger(__name__)

#: The soft descriptor limit the node asks for (bounded by the hard limit).
FD_LIMIT_WANTED = 65536


class ReceiveBudget:
    """Received, not yet handled bytes: at most ``per_association`` on one association and
    ``limit`` in all (thread-safe). Keys are association ids."""

    def __init__(self, limit: int, per_association: int) -> None:
        self.limit, self.per_association = limit, per_association
        self.used = 0
        self.high_water = 0
        self._by_assoc: dict[int, int] = {}
        self._lock = threading.Lock()

    def received(self, key: int, n: int) -> str | None:
        """Count ``n`` bytes on association ``key``; return why it must be cut, or ``None``."""
        with self._lock:
            held = self._by_assoc.get(key, 0) + n
            if held > self.per_association:
                return f"data set beyond max_instance_bytes ({held} bytes received so far)"
            if self.used + n > self.limit:
                return (
                    f"the node holds {self.used} received bytes from all associations, "
                    f"max_receiving_bytes {self.limit}"
                )
            self._by_assoc[key] = held
            self.used += n
            self.high_water = max(self.high_water, self.used)
            return None

    def handed_over(self, key: int) -> None:
        """The association's message was handled (or it closed): its bytes are no longer held."""
        with self._lock:
            self.used = max(0, self.used - self._by_assoc.pop(key, 0))


def _poll_ready(self) -> bool:  # type: ignore[no-untyped-def]
    """``AssociationSocket.ready`` with ``poll`` (pynetdicom's own body, ``select`` replaced)."""
    if self.socket is None or self._is_connected is False:
        return False
    try:
        poller = select.poll()
        poller.register(self.socket, select.POLLIN | select.POLLPRI)
        ready = bool(poller.poll(0))
    except (OSError, TimeoutError, ValueError):
        self.event_queue.put("Evt17")  # transport connection closed
        return False
    pending = getattr(self.socket, "pending", None)  # an SSL socket may hold decrypted bytes
    return ready or bool(pending and pending())


def use_poll_readiness() -> None:
    """Make pynetdicom test socket readiness with ``poll`` (idempotent; where it exists)."""
    from pynetdicom import transport

    if hasattr(select, "poll") and transport.AssociationSocket.ready.fget is not _poll_ready:
        transport.AssociationSocket.ready = property(_poll_ready)  # type: ignore[assignment]


def raise_fd_limit(wanted: int = FD_LIMIT_WANTED) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to ``min(wanted, hard)``; return ``(soft, hard)`` after."""
    try:
        import resource
    except ImportError:  # not POSIX
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft, hard


class OneLineErrors(logging.Filter):
    """Turns a pynetdicom record that carries a traceback into one line with the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = "DICOM: request refused and association aborted: %s: %s"
            record.args = (type(exc).__name__, str(exc)[:200])
            record.exc_info, record.exc_text = None, None
        return True


def install_one_line_errors() -> None:
    """Install :class:`OneLineErrors` on pynetdicom's association logger (idempotent)."""
    logger = logging.getLogger("pynetdicom.association")
    if not any(isinstance(f, OneLineErrors) for f in logger.filters):
        logger.addFilter(OneLineErrors())
