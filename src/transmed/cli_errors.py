"""User errors become one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer


def os_message(exc: OSError) -> str:
    """One line for an operating-system error: ``path: reason`` when it names a file."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn ValueError (bad input, bad config, bad checkpoint) and OSError (unreadable input,
    unwritable output, full disk) into ``Error: ...`` + exit 2."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except ValueError as exc:
        typer.secho(f"Error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except OSError as exc:  # missing file, read-only folder, full disk: the OS's reason
        typer.secho(f"Error: {os_message(exc)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except RuntimeError as exc:
        from transmed.training.trainer import TrainingError

        if isinstance(exc, TrainingError):
            typer.secho(f"Error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        raise
