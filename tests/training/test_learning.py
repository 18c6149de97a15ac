"""Learning works: a small model trained for a few dozen steps on one tiny synthetic case fits
it (WT Dice > 0.8 on that case) and its loss falls. Anything that breaks learning (the loss,
the targets, the optimiser, the schedule, the data pipeline) fails this test."""

from __future__ import annotations

import csv
from pathlib import Path

from transmed.training.config import TrainConfig
from transmed.training.run import train


def test_small_model_fits_one_case(tiny_brats: Path, tmp_path: Path) -> None:
    case = "BraTS2021_00000"
    cfg = TrainConfig(
        model="unet", model_kwargs={"features": [8, 16, 32, 32]}, epochs=4, iters_per_epoch=12,
        batch_size=2, patch_size=(32, 32, 24), lr=5e-3, warmup_epochs=0.25, val_every=4,
        foreground_prob=0.5, num_workers=0, seed=0, augment={"affine_prob": 0.0,
        "elastic_prob": 0.0},
    )  # fmt: skip
    out = tmp_path / "fit"
    result = train(tiny_brats, out, cfg, split={"train": [case], "val": [case]}, progress=False,
                   evaluate=False)  # fmt: skip
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.6 * losses[0], losses
    last = rows[-1]
    assert float(last["val_dice_WT"]) > 0.8, last
    assert float(last["val_dice_TC"]) > 0.6, last
    assert result.best_dice > 0.6
