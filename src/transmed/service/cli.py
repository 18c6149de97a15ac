"""``transmed serve``: run the DICOM node until SIGINT or SIGTERM.

Heavy imports (torch, pynetdicom, pydicom) happen inside the command so ``transmed --help``
stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer


def serve_cmd(
    config: Path = typer.Option(..., "--config", help="Service configuration file (YAML)."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Run the DICOM node: C-ECHO/C-STORE in, SEG out (C-STORE or STOW-RS), HTTP health.

    See docs/service.md for the configuration file and how to register the node with a PACS.
    """
    import logging
    import signal
    import threading
    import warnings

    from transmed.cli_errors import user_errors

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("pynetdicom").setLevel(max(level, logging.WARNING))
    # pydicom also *warns* (stderr, i.e. the service's log) with the value of a malformed
    # element, which may be a patient's name; its log records are rewritten by the node.
    warnings.filterwarnings("ignore", message=r"Invalid value for VR", category=UserWarning)
    with user_errors():
        from transmed.service.config import load_config
        from transmed.service.service import DicomNode

        node = DicomNode(load_config(config))
        stop = threading.Event()

        def _stop(signum: int, _frame: object) -> None:
            logging.getLogger("transmed.service").info(
                "%s received: stopping", signal.Signals(signum).name
            )
            stop.set()

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        node.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            node.stop()
