"""The ``transmed`` command line: a thin typer app over the package's modules.

Heavy imports (torch, MONAI, nibabel) happen inside the commands so ``transmed --help`` is
instant. Sub-command groups live beside the code they drive.
"""

from __future__ import annotations

from pathlib import Path

import typer

from transmed import __version__
from transmed.bench.cli import app as bench_app
from transmed.data.cli import app as data_app
from transmed.evaluation.cli import evaluate_cmd
from transmed.evaluation.cli_compare import compare_cmd, report_cmd
from transmed.federated.cli import app as federated_app
from transmed.inference.cli import predict_cmd
from transmed.service.cli import serve_cmd
from transmed.training.cli import cv_cmd, train_cmd
from transmed.viewer.cli import view_cmd

app = typer.Typer(
    name="transmed",
    help="TransMed: 3D brain-tumour MRI segmentation (axial attention + dynamic convolution).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # "[brats2021]" is a default, not a rich tag; ``x`` is code
)
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
app.add_typer(federated_app, name="federated")
app.command("train")(train_cmd)
app.command("cv")(cv_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("compare")(compare_cmd)
app.command("report")(report_cmd)
app.command("predict")(predict_cmd)
app.command("serve")(serve_cmd)
app.command("view")(view_cmd)


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
def models_cmd(
    pretrained: bool = typer.Option(
        False, "--pretrained", help="List the shipped pretrained models (version, SHA-256)."
    ),
) -> None:
    """List the registered models and their constructor arguments."""
    from transmed.models import list_models, model_kwargs

    if pretrained:
        from transmed.cli_errors import user_errors
        from transmed.models.pretrained import list_pretrained, pretrained_path

        with user_errors():
            for entry in list_pretrained():
                path = pretrained_path(entry.name)  # refuses a file whose hash does not match
                size = path.stat().st_size / 1e6
                typer.echo(f"{entry.name:12s} v{entry.version}  sha256 {entry.sha256}  "
                           f"{size:.1f} MB  {path}")  # fmt: skip
                typer.echo(f"{'':12s} {entry.summary}")
        return
    for name in list_models():
        args = ", ".join(
            f"{k}={p.default!r}" for k, p in model_kwargs(name).items() if p.default is not p.empty
        )
        typer.echo(f"{name:15s} {args}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo"), "--out", help="Output folder."),
    study: bool = typer.Option(
        False, "--study",
        help="Run the synthetic ablation study (train, evaluate, compare) instead of the "
        "real example examination.",
    ),  # fmt: skip
    model: str = typer.Option(
        None, "--model", "-m", help="Example only: another model than the shipped generalist."
    ),
    cases: int = typer.Option(None, "--cases", min=3, help="Study: synthetic cases [24]."),
    test_cases: int = typer.Option(None, "--test-cases", min=1, help="Study: held out [8]."),
    shape: tuple[int, int, int] = typer.Option(None, "--shape",
                                               help="Study: volume D H W [96 96 64]."),
    models: str = typer.Option(None, "--models",
                               help="Study: comma-separated [transmed_full,unet]."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Study: [10]"),
    iters: int = typer.Option(None, "--iters-per-epoch", min=1, help="Study: [30]"),
    seed: int = typer.Option(None, "--seed", help="Study: [0]"),
) -> None:
    """The main job: the shipped generalist model on the real TCGA-FG-6692 examination.

    Writes OUT/prediction (label maps on every series' native grid, provenance JSON),
    OUT/TCGA-FG-6692_overlay.png and OUT/report.html. With --study: the synthetic
    ablation study (cohort, training of each model, evaluation, paired comparison, HTML
    report); its defaults (in brackets) are those of transmed.demo.DemoSettings.
    """
    from transmed.cli_errors import user_errors

    with user_errors():
        if not study:
            from transmed.demo_example import run_example

            res = run_example(out, model=model)
            vols = ", ".join(f"{k} {v:.1f} ml" for k, v in res["volumes_ml"].items())
            typer.echo(f"Segmented in {res['seconds']:.1f} s: {vols}")
            typer.echo(f"Label map: {res['label']}\nOverlay: {res['overlay']}\n"
                       f"Report: {res['report']}\nReview: transmed view {res['label'].parent}")
            return
        from transmed.demo import SCALE_UP, DemoSettings, run_demo

        given = {
            "cases": cases, "test_cases": test_cases, "shape": shape, "epochs": epochs,
            "iters_per_epoch": iters, "seed": seed,
            "models": tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
        }  # fmt: skip
        settings = DemoSettings(**{k: v for k, v in given.items() if v is not None})
        result = run_demo(out, settings)
        typer.echo(result["comparison"])
        typer.echo(f"\nDone in {result['minutes']:.1f} min. Report: {result['report']}")
        typer.echo(f"Comparison: {out / 'comparison' / 'compare.md'}")
        typer.echo(SCALE_UP)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
