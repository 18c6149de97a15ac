"""The main job: a small ablation study on the synthetic cohort, end to end, in minutes on a CPU.

Synthesise a BraTS-like cohort → preprocess once → train each model on the same patches for the
same budget → predict the held-out cases on their original grid and evaluate them →
``compare`` (paired tests) → ``report`` (HTML). Every stage writes its artifacts under the demo
folder, and each is the same code a user runs on a real BraTS copy.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transmed.training.config import TrainConfig


@dataclass(frozen=True)
class DemoSettings:
    """The demo's fixed budget (defaults fit in ≈ 15 minutes on 2 CPU cores)."""

    cases: int = 24
    test_cases: int = 8
    shape: tuple[int, int, int] = (96, 96, 64)  # synthetic volume (≈ 2.4 mm voxels)
    models: tuple[str, ...] = ("transmed_full", "unet")
    epochs: int = 10
    iters_per_epoch: int = 30
    patch_size: tuple[int, int, int] = (64, 64, 48)
    batch_size: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cases < self.test_cases + 2 or self.test_cases < 1:
            raise ValueError("need ≥ 1 test case and ≥ 2 training cases")


def train_config(settings: DemoSettings, model: str) -> TrainConfig:
    return TrainConfig(
        model=model,
        epochs=settings.epochs,
        iters_per_epoch=settings.iters_per_epoch,
        batch_size=settings.batch_size,
        patch_size=settings.patch_size,
        lr=2e-3,
        warmup_epochs=1,
        val_every=settings.epochs,  # validate once, at the end
        temperature_epochs=max(1, settings.epochs // 2),
        num_workers=1,
        seed=settings.seed,
        augment={"elastic_prob": 0.0, "affine_prob": 0.2},
    )


def run_demo(
    out: Path, settings: DemoSettings | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the study into ``out`` (resumable: finished stages are kept). Returns paths."""
    from transmed.data.synth import generate_cohort
    from transmed.evaluation.compare import compare
    from transmed.evaluation.report import write_study_report
    from transmed.training.run import prepare_data, train

    settings = settings or DemoSettings()
    out = Path(out)
    t0 = time.perf_counter()
    data = out / "data"
    generate_cohort(data, settings.cases, settings.seed, settings.shape, progress=progress,
                    skip_existing=True)  # fmt: skip
    preprocessed, ids = prepare_data(data, out / "preprocessed", progress)
    ids = sorted(ids)
    split = {"train": ids[settings.test_cases:], "val": ids[: settings.test_cases]}
    runs = []
    for model in settings.models:
        run_dir = out / "runs" / model
        if not (run_dir / "evaluation.json").is_file():
            resume = (run_dir / "checkpoints" / "latest.pt").is_file()
            if not resume and run_dir.exists():  # stopped before its first epoch ended:
                shutil.rmtree(run_dir)  # nothing to keep; start that model again
            train(preprocessed, run_dir, None if resume else train_config(settings, model),
                  resume=resume, split=split, preprocessed_cache=preprocessed,
                  progress=progress)  # fmt: skip
        runs.append(run_dir)
    _, markdown, _ = compare(runs, out=out / "comparison")
    report = write_study_report(runs, out / "report.html")
    return {
        "out": out,
        "comparison": markdown,
        "report": report,
        "minutes": (time.perf_counter() - t0) / 60,
        "runs": runs,
    }


SCALE_UP = """
Scale the same study up to a real BraTS copy on a GPU:
  transmed data index /data/BraTS2021
  transmed cv --data /data/BraTS2021 --model transmed_full --folds 5 --out cv/transmed_full
  transmed cv --data /data/BraTS2021 --model unet --folds 5 --out cv/unet \\
      --splits cv/transmed_full/splits.json
  transmed compare cv/unet cv/transmed_full --out comparison
  transmed report cv/transmed_full
(defaults: 128³ patches, 100 epochs × 250 steps, bf16 on the GPU; see `transmed train --help`)
"""
