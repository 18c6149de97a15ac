"""Run-level entry points behind ``transmed train`` and ``transmed cv``.

Stages talk through files: raw data are preprocessed once (``preprocessed/``), a run folder
holds its config, split, metrics and checkpoints, and a cross-validation folder holds
``splits.json`` (written once, folds grouped by patient; a user-supplied file wins after its
checks, see :mod:`transmed.training.splits`) and one run folder per fold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transmed.training.config import ConfigError, TrainConfig
from transmed.training.splits import load_splits, make_folds, patient_groups
from transmed.training.trainer import (
    Trainer,
    TrainingError,
    TrainResult,
    read_run_config,
    split_cases,
    write_run_files,
)
from transmed.transforms.store import write_json


def prepare_data(data: Path, cache_dir: Path, progress: bool = True) -> tuple[Path, list[str]]:
    """A preprocessed folder for ``data`` and its labelled case ids.

    ``data`` may already be preprocessed (``transmed data preprocess``); a raw dataset in any
    supported layout is preprocessed into ``cache_dir`` once and reused while its source
    matches.
    """
    from transmed.transforms.datasets import preprocess_dataset, read_preprocessed_summary

    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"{data}: data folder not found")
    try:
        summary = read_preprocessed_summary(data)
        folder = data
    except ValueError:
        folder = cache_dir
        try:
            summary = read_preprocessed_summary(cache_dir)
            if Path(summary.get("source", "")).resolve() != data.resolve():
                raise ValueError("cache from another source")
        except ValueError:
            summary = preprocess_dataset(data, cache_dir, progress=progress)
    ids = [c["case_id"] for c in summary["cases"] if c.get("has_label")]
    if not ids:
        raise ValueError(f"{data}: no labelled case to train on")
    return folder, ids


def _guard_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / "checkpoints" / "latest.pt").is_file():
            raise ConfigError(f"{out}: nothing to resume (no checkpoints/latest.pt)")
    elif (out / "checkpoints").exists() or (out / "config.json").exists():
        raise ConfigError(
            f"{out}: already holds a run; use --resume to continue it or choose another --out"
        )


def initial_weights(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """Resolve ``config.init_from`` (a shipped model's name, a checkpoint, or a run folder)
    into its weights, and adopt the model and constructor arguments they were trained with
    (the preprocessing of the new data stays the user's own).

    Raises:
        ConfigError: a checkpoint for another number of input or output channels.
    """
    from transmed.models.checkpoint import load_checkpoint
    from transmed.models.pretrained import resolve_model

    path = resolve_model(config.init_from)
    if path.is_dir():
        for name in ("final.pt", "best.pt", "latest.pt"):
            if (path / "checkpoints" / name).is_file():
                path = path / "checkpoints" / name
                break
    ckpt = load_checkpoint(path)
    mc = ckpt["model_config"]
    if int(mc.get("in_channels", 4)) != 4 or int(mc.get("out_channels", 3)) != 3:
        raise ConfigError(f"{path}: --init-from needs a 4-channel-in, 3-region-out model")
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    from transmed.models import stored_kwargs

    kwargs = stored_kwargs(mc["name"], dict(mc["kwargs"]))
    adopted = config.model_copy(update={"model": mc["name"], "model_kwargs": kwargs})
    return adopted, state


def train(
    data: Path,
    out: Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    split: dict[str, list[str]] | None = None,
    preprocessed_cache: Path | None = None,
    device: str | None = None,
    progress: bool = True,
    evaluate: bool = True,
) -> TrainResult:
    """Train one model; with ``resume``, continue the run in ``out`` with its own config."""
    out = Path(out)
    _guard_out(out, resume)
    if resume:
        config, split, data = read_run_config(out)
    if config is None:
        raise ConfigError("a config is needed to start a run")
    from transmed.training.distributed import init_distributed

    ctx = init_distributed()
    cache = preprocessed_cache or out / "preprocessed"
    if not ctx.is_main:  # rank 0 preprocesses; the others then find its cache
        ctx.barrier()
    folder, ids = prepare_data(Path(data), cache, progress and ctx.is_main)
    if ctx.is_main:
        ctx.barrier()
    if split is None:
        split = split_cases(ids, config.val_fraction, config.seed)
    unknown = sorted((set(split.get("train", [])) | set(split.get("val", []))) - set(ids))
    if unknown:
        raise TrainingError(f"split names cases the data do not have: {unknown[:5]}")
    init_state = None
    if config.init_from and not resume:
        config, init_state = initial_weights(config)
    if not resume:
        config = config.pinned()
    trainer = Trainer(config, folder, out, split, device=device, progress=progress, dist_ctx=ctx,
                      init_state=init_state)  # fmt: skip
    if trainer.ctx.is_main and not resume:
        write_run_files(out, config, split, Path(data))
    trainer.ctx.barrier()
    result = trainer.run(resume=resume)
    if trainer.ctx.is_main and evaluate:
        from transmed.training.oof import finish_run

        finish_run(out, folder, split, progress)
    return result


def cross_validate(
    data: Path,
    out: Path,
    config: TrainConfig,
    folds: int = 5,
    *,
    splits_file: Path | None = None,
    only_folds: list[int] | None = None,
    device: str | None = None,
    progress: bool = True,
    patient_regex: str | None = None,
    patient_map: Path | None = None,
) -> dict[str, Any]:
    """Train every fold (resuming unfinished ones), predict out-of-fold cases, evaluate.

    Folds are made of patients (:mod:`transmed.training.splits`): by default BraTS 2023 time
    points of one patient stay together; ``patient_regex`` or ``patient_map`` say who is who in
    other layouts (the rule, not the table, is recorded in ``out/config.json``: patient ids
    may be identifiers). A splits file (given, or left by an earlier run) is checked against
    the grouping before any training.

    Returns the summary also written to ``out/summary.json``.
    """
    from transmed.training.oof import predict_out_of_fold, summary_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder, ids = prepare_data(Path(data), out / "preprocessed", progress)
    groups = patient_groups(ids, regex=patient_regex, mapping=patient_map)
    splits_path = out / "splits.json"
    if splits_file is not None:
        splits = load_splits(splits_file, ids, groups)
        write_json(splits, splits_path)
    elif splits_path.is_file():
        splits = load_splits(splits_path, ids, groups)
    else:
        splits = make_folds(ids, folds, config.seed, groups)
        write_json(splits, splits_path)
    if only_folds is not None and any(not 0 <= f < len(splits) for f in only_folds):
        raise ConfigError(f"--fold must be in 0..{len(splits) - 1}, got {only_folds}")
    for k in only_folds if only_folds is not None else range(len(splits)):
        run_dir = out / f"fold_{k}"
        if (run_dir / "checkpoints" / "final.pt").is_file():
            continue  # fold done
        resume = (run_dir / "checkpoints" / "latest.pt").is_file()
        if not resume and run_dir.exists():
            raise ConfigError(f"{run_dir}: exists without a checkpoint; remove it to retrain")
        train(folder, run_dir, config, resume=resume, split=splits[k], preprocessed_cache=folder,
              device=device, progress=progress, evaluate=False)  # fmt: skip
    grouping = {"regex": patient_regex, "map": str(patient_map) if patient_map else None}
    write_json({**config.model_dump(mode="json"), "data": str(data), "patients": grouping},
               out / "config.json")  # fmt: skip
    evaluation = predict_out_of_fold(out, folder, splits, progress=progress)
    summary = {"folds": len(splits), "evaluation": evaluation.get("metrics", {}),
               "table": summary_table(evaluation)}  # fmt: skip
    write_json(summary, out / "summary.json")
    return summary
