"""User errors become one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn ValueError (bad input, bad config, bad checkpoint) into ``Error: ...`` + exit 2."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"Error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except RuntimeError as exc:
        from transmed.training.trainer import TrainingError

        if isinstance(exc, TrainingError):
            typer.secho(f"Error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        raise
