"""Validation during training scores what ``predict`` will deploy: the checkpoint's recorded
inference mode (issue 10; validation used a sliding window while deployment ran whole volume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transmed.data.labels import REGIONS, labels_to_regions
from transmed.evaluation.metrics import dice
from transmed.inference.predictor import Predictor
from transmed.models import create_model
from transmed.models.checkpoint import DEFAULT_INFERENCE_MODE
from transmed.training.config import TrainConfig
from transmed.training.trainer import validate
from transmed.transforms.store import save_arrays


def test_validation_dice_equals_the_default_predictors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 40, 36, 28)).astype(np.float32)  # larger than the patch
    label = np.zeros((40, 36, 28), np.uint8)
    label[10:30, 8:28, 6:22] = 2
    label[14:26, 12:24, 10:18] = 3
    path = save_arrays(tmp_path / "case.npz", image, label)
    model = create_model("unet", features=(8, 16, 32, 32)).eval()
    config = TrainConfig(model="unet", patch_size=(24, 24, 24))
    scores = validate(model, [path], config, "fp32")
    predictor = Predictor([model], roi_size=config.patch_size, overlap=config.val_overlap)
    assert predictor.resolved_mode == DEFAULT_INFERENCE_MODE
    probs = predictor.probabilities(image)
    ref = labels_to_regions(label)
    for i, region in enumerate(REGIONS):
        assert scores[f"val_dice_{region}"] == dice(probs[i] > 0.5, ref[i])
    # and the other mode really scores differently on this case, so the check can fail
    predictor.mode = "whole" if DEFAULT_INFERENCE_MODE == "sliding" else "sliding"
    other = predictor.probabilities(image)
    assert np.abs(other - probs).max() > 1e-3
