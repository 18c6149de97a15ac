"""``transmed data ...``: index datasets, synthesise a cohort, preprocess and augment."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Datasets: index, synthesise, preprocess, augment.", no_args_is_help=True,
    rich_markup_mode="markdown",  # bracketed defaults stay visible (not rich tags)
)  # fmt: skip

# Each command below is owned by the module it calls; keep the bodies thin.


@app.command("index")
def index_cmd(
    directory: Path = typer.Argument(..., help="Dataset folder (BraTS 2021/2023, MSD, nnU-Net)."),
    layout: str = typer.Option("auto", help="Layout name, or 'auto' to detect it."),
    strict: bool = typer.Option(False, help="Exit non-zero if any case is incomplete or bad."),
) -> None:
    """Print the cases found, the layout, and what is wrong with any incomplete case.

    Reads headers only (no voxel data). Exit code 1 with --strict when any case or file has a
    problem; 2 for a missing, empty or unrecognised folder or an unknown layout.
    """
    from transmed.data.cases import LAYOUTS, index_report
    from transmed.data.layouts import index_dataset

    if layout != "auto" and layout not in LAYOUTS:
        raise typer.BadParameter(
            f"{layout!r} is not one of auto, {', '.join(LAYOUTS)}", param_hint="--layout"
        )
    try:
        index = index_dataset(directory, layout=layout, progress=True)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="DIRECTORY") from None
    for line in index_report(index):
        typer.echo(line)
    if strict and index.problems:
        typer.echo(f"{len(index.problems)} problem(s) found (--strict)", err=True)
        raise typer.Exit(code=1)


@app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (BraTS 2021 layout)."),
    cases: int = typer.Option(10, "--cases", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", help="Random seed; same seed, same cohort."),
    shape: tuple[int, int, int] = typer.Option(
        (240, 240, 155), "--shape", help="Volume shape D H W (BraTS: 240 240 155)."
    ),
) -> None:
    """Synthesise a BraTS-like cohort on real MNI anatomy (no download).

    Writes OUT/BraTS2021_XXXXX/ with int16 t1, t1ce, t2, flair, a uint8 seg (1 NCR, 2 ED,
    4 ET) and generation.json. Existing non-empty case folders are never overwritten.
    """
    from transmed.data.synth import generate_cohort

    try:
        folders = generate_cohort(out, cases, seed, shape=tuple(shape), progress=True)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(
        f"Wrote {len(folders)} synthetic case(s) to {out.resolve()} (seed {seed}, "
        f"shape {' x '.join(map(str, shape))})"
    )


@app.command("preprocess")
def preprocess_cmd(
    data: Path = typer.Option(..., "--data", help="Raw dataset folder (any supported layout)."),
    out: Path = typer.Option(..., "--out", help="Output folder: {case}.npz + {case}.json."),
    spacing: tuple[float, float, float] | None = typer.Option(
        None, "--spacing", help="Target voxel size X Y Z in mm (default: the reference's)."
    ),
    reference: str = typer.Option("t1ce", "--reference", help="Reference modality or 'finest'."),
    foreground: str = typer.Option("auto", "--foreground", help="auto, nonzero or otsu."),
    margin: float = typer.Option(5.0, "--margin", help="Margin around the foreground box (mm)."),
    coregistration: str = typer.Option(
        "header", "--coregistration", help="header (affines only) or rigid (adds registration)."
    ),
    layout: str = typer.Option("auto", "--layout", help="Layout name, or 'auto' to detect it."),
) -> None:
    """Preprocess a dataset for training: RAS, co-registration, spacing, crop, z-score."""
    from transmed.transforms.datasets import preprocess_dataset
    from transmed.transforms.preprocess import PreprocessConfig

    try:
        config = PreprocessConfig(
            target_spacing=spacing,
            reference=reference,
            foreground=foreground,
            margin_mm=margin,
            coregistration=coregistration,
        )
        summary = preprocess_dataset(data, out, config, layout=layout)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{len(summary['cases'])} cases preprocessed into {out}")
    for item in summary["skipped"]:
        typer.echo(f"skipped: {item}", err=True)
    for item in summary["failed"]:
        typer.echo(f"failed: {item['case']}: {item['error']}", err=True)
    if summary["failed"]:
        raise typer.Exit(1)


@app.command("brain-mask")
def brain_mask_cmd(
    input: Path = typer.Option(..., "--input", "-i", help="A T1 or T1ce NIfTI, skull on."),
    output: Path = typer.Option(..., "--output", "-o", help="Mask to write (.nii.gz, uint8)."),
    force: bool = typer.Option(False, "--force", help="Write an implausible mask anyway."),
) -> None:
    """Brain mask of one series with deepbet, on the series' own grid.

    Thick slices are handled (extraction on a 1 mm grid, the mask mapped back). A mask whose
    volume is outside 800-2,000 ml, or with several large parts, is refused unless --force.
    """
    import json

    from transmed.io.nifti import load_volume, save_volume
    from transmed.transforms.brain_extraction import brain_mask

    try:
        volume = load_volume(input)
        result = brain_mask(volume.data, volume.affine)
        if result.problems and not force:
            raise ValueError(f"{input}: implausible brain mask: {'; '.join(result.problems)} "
                             "(--force writes it anyway)")  # fmt: skip
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    save_volume(result.mask.astype("uint8"), volume.affine, output)
    typer.echo(json.dumps({"mask": str(output), **result.summary()}))


@app.command("augment")
def augment_cmd(
    data: Path = typer.Option(..., "--data", help="Preprocessed folder (from 'data preprocess')."),
    out: Path = typer.Option(..., "--out", help="Output folder for the expanded set."),
    augment_factor: int = typer.Option(5, "--augment-factor", min=1, help="Samples per case."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; same seed, same samples."),
    include_original: bool = typer.Option(
        True, help="Sample 0 of each case is the unaugmented case."
    ),
    elastic_prob: float = typer.Option(0.1, "--elastic-prob", help="Elastic deformation prob."),
) -> None:
    """Materialise an augmented training set: AUGMENT-FACTOR samples per preprocessed case."""
    from transmed.transforms.augment import AugmentConfig
    from transmed.transforms.datasets import augment_dataset

    try:
        config = AugmentConfig(elastic_prob=elastic_prob)
        result = augment_dataset(
            data,
            out,
            factor=augment_factor,
            seed=seed,
            config=config,
            include_original=include_original,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{len(result['samples'])} samples written to {out}")
