"""``transmed predict`` (work in progress)."""

from __future__ import annotations

import typer


def predict_cmd() -> None:
    """Predict cases (work in progress)."""
    raise typer.Exit(1)
