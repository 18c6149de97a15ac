"""The folds of a cross-validation ensemble must agree: preprocessing, patch size, outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from transmed.inference.predictor import Predictor
from transmed.models.checkpoint import CheckpointError, save_untrained_checkpoint

TINY = {"features": [8, 16, 32, 32]}
PREP = {"target_spacing": None, "reference": "t1ce", "coregistration": "header"}


def _cv(root: Path, folds: list[dict[str, Any]]) -> Path:
    """A CV folder whose fold k is an untrained tiny U-Net saved with ``folds[k]``."""
    for k, kw in enumerate(folds):
        kw = {"patch_size": (32, 32, 32), "preprocess": PREP, **kw}
        path = root / f"fold_{k}" / "checkpoints" / "final.pt"
        path.parent.mkdir(parents=True)
        save_untrained_checkpoint(path, "unet", **{**TINY, **kw})
    return root


def test_agreeing_folds_make_one_ensemble(tmp_path: Path) -> None:
    predictor = Predictor.from_path(_cv(tmp_path / "cv", [{}, {}, {}]))
    assert len(predictor.models) == 3 and predictor.roi_size == (32, 32, 32)


@pytest.mark.parametrize(
    ("fold_2", "message"),
    [
        ({"preprocess": {**PREP, "target_spacing": (1.5, 1.5, 1.5)}},
         r"fold_2 \(.*fold_2/checkpoints/final\.pt\).*preprocessing.*target_spacing"),
        ({"patch_size": (48, 48, 48)},
         r"fold_2 \(.*final\.pt\): patch size \(48, 48, 48\) where fold_0 .* \(32, 32, 32\)"),
        ({"out_channels": 2}, r"fold_2 \(.*final\.pt\): 2 output channels where fold_0 .* 3"),
    ],
    ids=["preprocessing", "patch", "outputs"],
)
def test_a_differing_fold_is_named(fold_2: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=message):
        Predictor.from_path(_cv(tmp_path / "cv", [{}, {}, fold_2]))


def test_a_fold_without_recorded_preprocessing_uses_the_default_and_must_match(
    tmp_path: Path,
) -> None:
    """No preprocess_config means the default preprocessing, not "whatever the others say"."""
    cv = _cv(tmp_path / "cv", [{"preprocess": None},
                               {"preprocess": {**PREP, "target_spacing": (2.0, 2.0, 2.0)}}])
    with pytest.raises(CheckpointError, match=r"fold_1 .*target_spacing \(2\.0, 2\.0, 2\.0\)"):
        Predictor.from_path(cv)
    same = _cv(tmp_path / "cv2", [{"preprocess": None}, {"preprocess": {}}])
    assert len(Predictor.from_path(same).models) == 2  # both the default: they agree
