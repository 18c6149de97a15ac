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
              serve_config=serve_config)  # fmt: skip


def serve(
    path: Path,
    *,
    images: Path | None = None,
    layout: str = "auto",
    host: str = "127.0.0.1",
    port: int = 0,
    case: str | None = None,
    serve_config: Path | None = None,
) -> None:
    """Serve ``path`` until interrupted; prints the URL (with its token) on stdout."""
    import secrets
    import socket
    from urllib.parse import quote

    import uvicorn

    from transmed.viewer.app import build_app
    from transmed.viewer.sources import catalogue, safe_id

    cat = catalogue(path, images=images, layout=layout)
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
    if host in ("127.0.0.1", "::1", "localhost"):
        hosts = ["127.0.0.1", "localhost", "[::1]", "::1"]
    app = build_app(cat, token=token, hosts=hosts, send_outbox=sender)
    ok = sum(c.problem is None for c in cat.cases)
    typer.echo(f"{len(cat.cases)} case(s) ({ok} viewable) in {cat.root} [{cat.kind}]", err=True)
    for problem in cat.problems:
        typer.echo(f"  ! {problem}", err=True)
    if case is not None and safe_id(case) not in {c.case_id for c in cat.cases}:
        raise ValueError(f"--case {case}: no such case in {cat.root}")
    first = f"&case={quote(safe_id(case))}" if case is not None else ""
    typer.echo(f"Open http://{shown}:{bound}/?token={token}{first}", err=False)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if sender is not None:
            sender.stop()
