"""The ``transmed`` command line: a thin typer app over the package's modules.

Heavy imports (torch, MONAI, nibabel) happen inside the commands so ``transmed --help`` is
instant. Sub-command groups live beside the code they drive.
"""

from __future__ import annotations

import typer

from transmed import __version__
from transmed.bench.cli import app as bench_app
from transmed.data.cli import app as data_app

app = typer.Typer(
    name="transmed",
    help="TransMed: 3D brain-tumour MRI segmentation (axial attention + dynamic convolution).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"transmed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """TransMed command line."""


@app.command("models")
def models_cmd() -> None:
    """List the registered models and their constructor arguments."""
    from transmed.models import list_models, model_kwargs

    for name in list_models():
        args = ", ".join(
            f"{k}={p.default!r}" for k, p in model_kwargs(name).items() if p.default is not p.empty
        )
        typer.echo(f"{name:15s} {args}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
