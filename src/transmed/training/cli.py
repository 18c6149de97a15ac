"""``transmed train`` and ``transmed cv`` (registered on the root app in ``transmed.cli``)."""

from __future__ import annotations

from pathlib import Path

import typer

from transmed.cli_errors import user_errors


def train_cmd(
    data: Path = typer.Option(None, "--data", help="Dataset folder (any layout) or preprocessed."),
    model: str = typer.Option(None, "--model", help="Registry name (see `transmed models`)."),
    out: Path = typer.Option(..., "--out", help="Run folder to create (or resume)."),
    config: Path = typer.Option(None, "--config", help="JSON/YAML TrainConfig file."),
    epochs: int = typer.Option(None, "--epochs", help="Override config epochs."),
    iters: int = typer.Option(None, "--iters-per-epoch", help="Override iterations per epoch."),
    patch: tuple[int, int, int] = typer.Option(None, "--patch-size", help="Patch D H W."),
    batch_size: int = typer.Option(None, "--batch-size"),
    precision: str = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16."),
    grad_checkpointing: bool = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing"),
    seed: int = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    device: str = typer.Option(None, "--device", help="cpu or cuda[:N] (default: cuda if any)."),
    preset: str = typer.Option(
        None, "--preset",
        help="'generalist': train from the synthetic generator, no --data needed.",
    ),
    init_from: str = typer.Option(
        None, "--init-from",
        help="Start from a checkpoint file or a shipped model name ('generalist').",
    ),
) -> None:
    """Train one model on a dataset; checkpoints latest/best/final in OUT/checkpoints."""
    with user_errors():
        from transmed.training.config import load_config
        from transmed.training.run import train

        generalist_run = (out / "generator.json").is_file()
        if preset is not None or (resume and generalist_run):
            from transmed.training.generalist import generalist_recipe, train_generalist

            if preset not in (None, "generalist"):
                raise typer.BadParameter(f"unknown preset {preset!r}; available: generalist")
            gcfg = generator = None
            if not resume:
                from transmed.training.config import read_config_file

                # the recipe, then the config file's keys, then the options given
                over = read_config_file(config) if config is not None else {}
                over.update({k: v for k, v in dict(
                    model=model, epochs=epochs, iters_per_epoch=iters, patch_size=patch,
                    batch_size=batch_size, precision=precision,
                    grad_checkpointing=grad_checkpointing, seed=seed,
                    init_from=init_from).items() if v is not None})  # fmt: skip
                gcfg, generator = generalist_recipe(over)
            result = train_generalist(out, gcfg, resume=resume, device=device,
                                      generator=generator)  # fmt: skip
            typer.echo(f"best validation Dice {result.best_dice:.4f}; run in {result.out_dir}")
            return
        cfg = None
        if not resume:
            if data is None:
                raise typer.BadParameter("--data is required (unless --resume)")
            cfg = load_config(
                config, model=model, epochs=epochs, iters_per_epoch=iters, patch_size=patch,
                batch_size=batch_size, precision=precision, grad_checkpointing=grad_checkpointing,
                seed=seed, init_from=init_from,
            )  # fmt: skip
        result = train(data, out, cfg, resume=resume, device=device)
        typer.echo(f"best validation Dice {result.best_dice:.4f}; run in {result.out_dir}")


def cv_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset folder (any layout)."),
    model: str = typer.Option(None, "--model", help="Registry name."),
    out: Path = typer.Option(..., "--out", help="Cross-validation folder (resumable)."),
    folds: int = typer.Option(5, "--folds", min=2),
    config: Path = typer.Option(None, "--config", help="JSON/YAML TrainConfig file."),
    splits: Path = typer.Option(
        None, "--splits",
        help="Your own splits.json (wins; checked: cases exist, train/val disjoint, every case "
        "validated exactly once, no patient on both sides of a fold).",
    ),
    patient_regex: str = typer.Option(
        None, "--patient-regex",
        help="Regex whose first group (or whole match) is the patient id in a case id; folds "
        "keep a patient's cases together. Default: BraTS 2023 time points "
        "(BraTS-GLI-00001-000, -001) are one patient, any other case its own.",
    ),
    patient_map: Path = typer.Option(
        None, "--patient-map",
        help="JSON {case_id: patient_id} or CSV/TSV (header; case id, patient id) instead.",
    ),
    fold: list[int] = typer.Option(None, "--fold", help="Train only these folds."),
    epochs: int = typer.Option(None, "--epochs"),
    iters: int = typer.Option(None, "--iters-per-epoch"),
    patch: tuple[int, int, int] = typer.Option(None, "--patch-size"),
    seed: int = typer.Option(None, "--seed"),
    device: str = typer.Option(None, "--device"),
) -> None:
    """K-fold cross-validation by patient: splits.json, one run per fold, out-of-fold
    predictions, summary."""
    with user_errors():
        from transmed.training.config import load_config
        from transmed.training.run import cross_validate

        cfg = load_config(config, model=model, epochs=epochs, iters_per_epoch=iters,
                          patch_size=patch, seed=seed)  # fmt: skip
        summary = cross_validate(data, out, cfg, folds, splits_file=splits,
                                 only_folds=fold or None, device=device,
                                 patient_regex=patient_regex, patient_map=patient_map)  # fmt: skip
        for line in summary.get("table", []):
            typer.echo(line)
        typer.echo(f"cross-validation in {out}")
