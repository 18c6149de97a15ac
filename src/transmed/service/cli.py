"""``transmed serve``: the DICOM node (work in progress, see issue 6)."""

from __future__ import annotations

from pathlib import Path

import typer


def serve_cmd(
    config: Path = typer.Option(..., "--config", help="Service configuration file (YAML)."),
) -> None:
    """Run the DICOM node: C-ECHO/C-STORE in, SEG out, HTTP health."""
    raise typer.Exit(1)
