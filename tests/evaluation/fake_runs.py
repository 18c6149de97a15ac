"""Fake training-run and cross-validation folders (the files ``transmed train``/``cv`` write),
with per-case metrics chosen by the test instead of computed from images."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

REGIONS = ("WT", "TC", "ET")
#: Columns of ``evaluation.csv`` as ``EvaluationReport.columns`` writes them without lesion-wise
#: scores (written out here so the tests check compare against the documented format).
COLUMNS = ("case", "region", "pred_missing", "dice", "hd95", "sensitivity", "specificity",
           "ref_volume_mm3", "pred_volume_mm3", "error")
TRAIN_COLUMNS = ("epoch", "step", "train_loss", "lr", "temperature", "nonfinite_steps",
                 "epoch_time_s", "val_dice_WT", "val_dice_TC", "val_dice_ET", "val_dice_mean")


def write_evaluation_csv(
    path: Path,
    dice: Mapping[str, Sequence[float]],
    hd95: Mapping[str, Sequence[float]] | None = None,
    failed: Sequence[str] = (),
) -> Path:
    """One row per case × region; ``dice[case]`` = (WT, TC, ET); failed cases get an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for case, values in dice.items():
            for i, region in enumerate(REGIONS):
                hd = hd95[case][i] if hd95 is not None else 10.0 * (1.0 - values[i])
                writer.writerow({"case": case, "region": region, "pred_missing": 0,
                                 "dice": repr(float(values[i])), "hd95": repr(float(hd)),
                                 "sensitivity": 0.9,
                                 "specificity": 0.999, "ref_volume_mm3": 1000.0,
                                 "pred_volume_mm3": 900.0, "error": ""})
        for case in failed:
            for region in REGIONS:
                row = {c: "" for c in COLUMNS}
                row.update(case=case, region=region, pred_missing=0,
                           error="prediction has shape (2, 2, 2) but reference has (4, 4, 4)")
                writer.writerow(row)
    return path


def write_training_log(path: Path, epochs: int = 6, offset: float = 0.0) -> Path:
    """A ``metrics.csv`` with validation every second epoch (empty cells otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRAIN_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for e in range(epochs):
            row = {"epoch": e, "step": 10 * (e + 1), "train_loss": 1.5 / (e + 1) + offset,
                   "lr": 1e-3, "temperature": 30 - e, "nonfinite_steps": 0, "epoch_time_s": 2.0}
            validated = e % 2 == 1 or e == epochs - 1
            for k, region in enumerate(REGIONS):
                row[f"val_dice_{region}"] = (0.9 - 0.1 * k - 0.5 / (e + 1) - offset
                                             if validated else "")
            row["val_dice_mean"] = 0.8 - 0.5 / (e + 1) if validated else ""
            writer.writerow(row)
    return path


def make_run(
    folder: Path,
    model: str,
    dice: Mapping[str, Sequence[float]],
    *,
    hd95: Mapping[str, Sequence[float]] | None = None,
    failed: Sequence[str] = (),
    parameters: int = 1_234_567,
    latency: Sequence[float] = (0.5, 0.7, 0.6),
    data: str | None = None,
    cv_folds: int = 0,
) -> Path:
    """A run folder (or a CV folder with ``cv_folds`` folds) with every file of the contract."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "model_kwargs": {}, "epochs": 6, "patch_size": [32, 32, 32],
              "seed": 0, "data": data if data is not None else str(folder / "no_such_data")}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    inference = {"model": model, "parameters": parameters, "device": "x86_64", "threads": 2,
                 "latency_s": list(latency),
                 "latency_s_median": sorted(latency)[len(latency) // 2]}
    (folder / "inference.json").write_text(json.dumps(inference))
    write_evaluation_csv(folder / "evaluation.csv", dice, hd95, failed)
    cases = list(dice)
    if cv_folds:
        splits = [{"train": [c for j, c in enumerate(cases) if j % cv_folds != k],
                   "val": [c for j, c in enumerate(cases) if j % cv_folds == k]}
                  for k in range(cv_folds)]
        (folder / "splits.json").write_text(json.dumps(splits))
        for k in range(cv_folds):
            (folder / f"fold_{k}").mkdir(exist_ok=True)
            (folder / f"fold_{k}" / "config.json").write_text(json.dumps(config))
            write_training_log(folder / f"fold_{k}" / "metrics.csv", offset=0.1 * k)
    else:
        (folder / "split.json").write_text(json.dumps({"train": [], "val": cases}))
        write_training_log(folder / "metrics.csv")
    return folder
