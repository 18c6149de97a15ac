"""After training: predict the held-out cases on their original grid and evaluate them.

A training run predicts its validation cases with ``final.pt`` (the last weights, as nnU-Net
does: ``best.pt`` was chosen on these very cases and would flatter them); a cross-validation
predicts each fold's held-out cases with that fold's ``final.pt`` (out-of-fold predictions).
Both end with ``evaluation.csv``/``evaluation.json`` (``transmed evaluate``'s output) and
``inference.json`` (parameters and per-case latency) in the run or CV folder.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from transmed.data.labels import REGIONS
from transmed.data.writing import write_prediction
from transmed.inference.predictor import Predictor
from transmed.progress import progress_bar
from transmed.transforms.datasets import read_preprocessed_summary
from transmed.transforms.store import load_arrays, load_record, write_json


def _source_and_layout(preprocessed: Path) -> tuple[Path, str]:
    summary = read_preprocessed_summary(preprocessed)
    return Path(summary["source"]), str(summary["layout"])


def predict_cases(
    jobs: list[tuple[Path, list[str]]],
    preprocessed: Path,
    out_dir: Path,
    pred_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict ``(checkpoint, case ids)`` jobs into ``pred_dir``; write inference.json.

    Returns the inference summary (model, parameters, per-case latency in seconds).
    """
    _, layout = _source_and_layout(preprocessed)
    latencies: list[float] = []
    name, params, device, mode = "", 0, "cpu", None
    total = sum(len(ids) for _, ids in jobs)
    bar = progress_bar(total=total, desc="predict held-out", unit="case", disable=not progress)
    for ckpt, ids in jobs:
        predictor = Predictor.from_path(ckpt)
        device, mode = predictor.device.type, predictor.resolved_mode
        model = predictor.models[0]
        name = model.config.get("name", type(model).__name__)
        params = sum(p.numel() for p in model.parameters())
        for case_id in ids:
            image, _ = load_arrays(preprocessed / f"{case_id}.npz")
            record = load_record(preprocessed / f"{case_id}.json")
            t0 = time.perf_counter()
            labels = predictor.labels_on_original_grid(image, record)
            latencies.append(time.perf_counter() - t0)
            write_prediction(labels, record.original_affine, pred_dir, case_id, layout)
            bar.update(1)
    bar.close()
    info = {
        "model": name,
        "parameters": params,
        "device": device,  # the torch device that ran: cpu, cuda (not the processor's arch)
        "processor": platform.processor() or platform.machine(),
        "inference_mode": mode,
        "threads": torch.get_num_threads(),
        "latency_s": latencies,
        "latency_s_median": statistics.median(latencies) if latencies else None,
        "note": "inference on the preprocessed grid + return to the original grid",
    }
    write_json(info, out_dir / "inference.json")
    return info


def evaluate_predictions(pred_dir: Path, preprocessed: Path, out_dir: Path) -> dict[str, Any]:
    """``transmed evaluate`` of ``pred_dir`` against the source dataset's labels."""
    from transmed.evaluation.evaluate import evaluate_folders, write_report

    source, layout = _source_and_layout(preprocessed)
    ids = {p.name.split(".nii")[0] for p in pred_dir.glob("*.nii*")}
    report = evaluate_folders(pred_dir, source, labels=layout, progress=False, case_ids=ids)
    write_report(report, out_dir / "evaluation")
    return json.loads((out_dir / "evaluation.json").read_text())


def finish_run(run_dir: Path, preprocessed: Path, split: dict, progress: bool = True) -> dict:
    """Predict and evaluate a training run's validation cases (nothing to do without any)."""
    if not split.get("val"):
        return {}
    ckpt = run_dir / "checkpoints" / "final.pt"
    predict_cases([(ckpt, split["val"])], preprocessed, run_dir, run_dir / "predictions",
                  progress)  # fmt: skip
    return evaluate_predictions(run_dir / "predictions", preprocessed, run_dir)


def predict_out_of_fold(
    cv_dir: Path, preprocessed: Path, splits: list[dict], progress: bool = True
) -> dict:
    jobs = [(cv_dir / f"fold_{k}" / "checkpoints" / "final.pt", s["val"])
            for k, s in enumerate(splits)]  # fmt: skip
    predict_cases(jobs, preprocessed, cv_dir, cv_dir / "oof", progress)
    return evaluate_predictions(cv_dir / "oof", preprocessed, cv_dir)


def summary_table(evaluation: dict[str, Any]) -> list[str]:
    """Markdown lines: mean ± sd of Dice and HD95 per region."""
    lines = ["| region | Dice | HD95 (mm) | n |", "|---|---|---|---|"]
    stats = evaluation.get("metrics", {})
    for r in REGIONS:
        d, h = stats.get(r, {}).get("dice", {}), stats.get(r, {}).get("hd95", {})
        if d:
            lines.append(f"| {r} | {d['mean']:.3f} ± {d['sd']:.3f} | "
                         f"{h.get('mean', float('nan')):.1f} ± {h.get('sd', float('nan')):.1f} | "
                         f"{d.get('n', '')} |")  # fmt: skip
    return lines
