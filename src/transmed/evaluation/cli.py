"""``transmed evaluate``: BraTS metrics of a prediction folder against a reference folder.

The command function is registered by :mod:`transmed.cli`; heavy imports stay inside it.
"""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate_cmd(
    pred: Path = typer.Option(..., "--pred", help="Folder of predicted label maps {case}.nii.gz."),
    ref: Path = typer.Option(
        ..., "--ref",
        help="Reference labels: a folder of {case}.nii.gz, or a BraTS/MSD/nnU-Net dataset folder "
        "(*seg.nii.gz found at any depth; labelsTr used).",
    ),
    out: Path = typer.Option(
        ..., "--out",
        help="Output: FILE (writes FILE.csv and FILE.json) or an existing folder (metrics.csv, "
        "metrics.json inside).",
    ),
    labels: str = typer.Option(
        "auto", "--labels",
        help="Reference label values: brats2021, brats2023, msd, nnunet, internal or auto "
        "(dataset.json, else *_seg = 2021, *-seg = 2023, else label 4 present = 2021).",
    ),
    pred_labels: str = typer.Option(
        "same", "--pred-labels", help="Prediction label values; 'same' = as the references."
    ),
    lesionwise: bool = typer.Option(
        True, "--lesionwise/--no-lesionwise", help="Add BraTS 2023 lesion-wise Dice and HD95."
    ),
    challenge: str = typer.Option(
        "BraTS-GLI", "--challenge", help="Lesion-wise parameters (BraTS-GLI/SSA/MEN/PED/MET)."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Cases evaluated in parallel."),
) -> None:
    """Dice, HD95 (mm), sensitivity, specificity per case and region (WT, TC, ET).

    A case whose prediction is missing or cannot be compared (grids differ, unreadable,
    unknown label values) counts in the means as the worst case (Dice 0, HD95 373.13 mm, as
    the BraTS challenge scores it); their number is printed beside the means and stored in the
    JSON. A case whose reference is unreadable is left out and listed.

    Exit status: 0 ok, 1 some case failed (results still written), 2 bad arguments or folders.
    """
    from transmed.evaluation.evaluate import evaluate_folders, write_report

    try:
        report = evaluate_folders(
            pred, ref, labels=labels, pred_labels=pred_labels, lesionwise=lesionwise,
            challenge=challenge, workers=workers,
        )
        csv_path, json_path = write_report(report, out)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # read-only or full --out folder, unreadable input: one line
        from transmed.cli_errors import os_message

        typer.echo(f"error: {os_message(exc)}", err=True)
        raise typer.Exit(2) from None
    summary = report.summary()
    shown = ["dice", "hd95"] + (["lesion_dice", "lesion_hd95"] if lesionwise else [])
    typer.echo(
        f"{summary['n_evaluated']}/{summary['n_references']} cases evaluated "
        f"(labels: ref {report.ref_labels}, pred {report.pred_labels})"
    )
    excluded = f"; {summary['n_excluded']} left out (unusable reference)" \
        if summary["n_excluded"] else ""  # fmt: skip
    typer.echo(
        f"means over {summary['n_in_means']} cases, {summary['n_worst_case']} of them missing "
        f"or failed and scored as the worst case (Dice 0, HD95 373.13 mm){excluded}"
    )
    typer.echo("region  " + "  ".join(f"{m:>12s}" for m in shown) + "  worst-case n")
    for region, values in summary["metrics"].items():
        cells = []
        for m in shown:
            mean = values[m]["mean"]
            cells.append(f"{mean:12.4f}" if mean is not None else f"{'-':>12s}")
        typer.echo(f"{region:6s}  " + "  ".join(cells) + f"  {summary['n_worst_case']:12d}")
    typer.echo(f"wrote {csv_path} and {json_path}")
    for case_id in summary["missing_predictions"]:
        typer.echo(f"missing prediction (scored as the worst case): {case_id}", err=True)
    for path in summary["unmatched_predictions"]:
        typer.echo(f"prediction without a reference (ignored): {path}", err=True)
    for case_id, message in summary["failed"].items():
        worst = " (scored as the worst case)" if case_id in summary["worst_case"] else ""
        typer.echo(f"failed{worst}: {case_id}: {message}", err=True)
    if summary["failed"]:
        raise typer.Exit(1)
