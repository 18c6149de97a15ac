"""``transmed view PATH``: open a case, a predict output folder or the node's storage in the
browser, on loopback, behind a random token."""

from __future__ import annotations

from pathlib import Path

import typer


def view_cmd(
    path: Path = typer.Argument(
        ..., help="Case folder, folder of loose files, predict output folder, or the storage "
        "folder of transmed serve."
    ),  # fmt: skip
    images: Path = typer.Option(
        None, "--images", help="Where a predict output folder's images are (read only), when "
        "its predict_summary.json does not say."
    ),  # fmt: skip
    layout: str = typer.Option(
        "auto", "--layout", help="Label values of the prediction: auto, brats2021, brats2023, "
        "msd, nnunet, internal."
    ),  # fmt: skip
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback default)."),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a --host that is not loopback (the page then "
        "travels unencrypted; the token still guards it)."
    ),  # fmt: skip
    port: int = typer.Option(0, "--port", min=0, max=65535, help="0: a free port."),
    case: str = typer.Option(None, "--case", help="Open this case first."),
    serve_config: Path = typer.Option(
        None, "--serve-config", help="transmed serve's YAML: deliver corrected SEGs of its "
        "studies through its outbox now (else they wait for the node's next start)."
    ),  # fmt: skip
) -> None:
    """Review and correct segmentations in the browser (NiiVue); prints the URL to open."""
    from transmed.cli_errors import user_errors

    with user_errors():
        serve(path, images=images, layout=layout, host=host, port=port, case=case,
              serve_config=serve_config, allow_remote=allow_remote)  # fmt: skip


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    path: Path,
    *,
    images: Path | None = None,
    layout: str = "auto",
    host: str = "127.0.0.1",
    port: int = 0,
    case: str | None = None,
    serve_config: Path | None = None,
    allow_remote: bool = False,
) -> None:
    """Serve ``path`` until interrupted; prints the URL (with its token) on stdout.

    Raises:
        ValueError: ``host`` is not loopback and ``allow_remote`` is not set, ``case`` is not
            in ``path``, or ``path`` holds nothing viewable (:class:`ViewerError`).
    """
    import secrets
    import socket
    from urllib.parse import quote

    import uvicorn

    from transmed.viewer.app import build_app
    from transmed.viewer.sources import catalogue, safe_id

    if not (is_loopback(host) or allow_remote):
        raise ValueError(f"--host {host}: not a loopback address; the viewer serves patient "
                         "images, so binding elsewhere needs --allow-remote")  # fmt: skip
    cat = catalogue(path, images=images, layout=layout)
    if case is not None and safe_id(case) not in {c.case_id for c in cat.cases}:
        raise ValueError(f"--case {case}: no such case in {cat.root}")
    sender = None
    if serve_config is not None:
        from transmed.service.config import load_config
        from transmed.service.outbox import Outbox, OutboxSender
        from transmed.service.senders import make_sender

        cfg = load_config(serve_config)
        if Path(cfg.storage_dir).resolve() != cat.root:
            raise ValueError(f"{serve_config}: its storage_dir is not {cat.root}")
        sender = OutboxSender(Outbox(cat.root), make_sender(cfg.destination, cfg.ae_title),
                              cfg.retry)  # fmt: skip
        sender.start()
    token = secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    hosts = None
    if is_loopback(host):  # Host headers a loopback page sends (DNS-rebinding guard)
        hosts = list(dict.fromkeys([host, "127.0.0.1", "localhost", "[::1]", "::1"]))
    ok = sum(c.problem is None for c in cat.cases)
    typer.echo(f"{len(cat.cases)} case(s) ({ok} viewable) in {cat.root} [{cat.kind}]", err=True)
    for problem in cat.problems:
        typer.echo(f"  ! {problem}", err=True)
    first = f"&case={quote(safe_id(case))}" if case is not None else ""
    # the case the page opens first: prepared while the browser starts
    opens = (
        safe_id(case)
        if case is not None
        else next((c.case_id for c in cat.cases if c.problem is None), None)
    )
    app = build_app(cat, token=token, hosts=hosts, send_outbox=sender, warm=opens)
    typer.echo(f"Open http://{shown}:{bound}/?token={token}{first}", err=False)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if sender is not None:
            sender.stop()
