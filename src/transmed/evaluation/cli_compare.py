"""``transmed compare`` and ``transmed report`` (registered on the root app by
:mod:`transmed.cli`); heavy imports stay inside the commands."""

from __future__ import annotations

from pathlib import Path

import typer

from transmed.cli_errors import user_errors


def compare_cmd(
    runs: list[Path] = typer.Argument(
        ..., help="Run or cross-validation folders (each with evaluation.csv).",
        metavar="RUN_OR_CV_DIR...", show_default=False,
    ),
    reference: str = typer.Option(
        None, "--reference",
        help="Reference run: a label, folder, model name or 0-based index. Default: the run "
        "whose model is 'unet', else the first folder.",
    ),
    out: Path = typer.Option(
        Path("comparison"), "--out",
        help="Folder for compare.md, compare.json, compare_dice.png, compare_hd95.png.",
    ),
    metric: list[str] = typer.Option(
        None, "--metric",
        help="Metric to compare (repeatable): dice, hd95, sensitivity, specificity, lesion_dice, "
        "lesion_hd95. Default: all that every run has.",
    ),
    n_resamples: int = typer.Option(
        10000, "--bootstrap", min=1, help="Bootstrap resamples of the CI of each difference."
    ),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Ablation table: accuracy per region, parameters and latency of each run, and paired
    tests (Wilcoxon, t-test, bootstrap CI of the difference) against a reference run."""
    with user_errors():
        from transmed.evaluation.compare import compare

        _, markdown, paths = compare(runs, reference=reference, metrics=metric or None, out=out,
                                     n_resamples=n_resamples, seed=seed)
    typer.echo(markdown)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def report_cmd(
    runs: list[Path] = typer.Argument(
        ..., help="Run or cross-validation folder(s) (with evaluation.csv); several: one study "
        "page with their comparison first.",
        metavar="RUN_OR_CV_DIR...", show_default=False,
    ),
    out: Path = typer.Option(
        None, "--out", help="HTML file to write (default RUN/report.html; needed for several)."
    ),
    data: Path = typer.Option(
        None, "--data",
        help="Dataset folder for the case overlays (default: config.json's \"data\").",
    ),
) -> None:
    """A self-contained HTML report: training curves, metrics table, best/median/worst case
    overlays and the config; for several runs, one page with their comparison first."""
    with user_errors():
        from transmed.evaluation.report import write_html_report, write_study_report

        if len(runs) == 1:
            path = write_html_report(runs[0], out, data=data)
        elif out is None:
            raise ValueError("several runs: give the page's file name with --out")
        else:
            path = write_study_report(runs, out, data=data)
    typer.echo(f"wrote {path}")
