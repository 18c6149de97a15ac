"""The predictor: preprocess → infer (one model or an ensemble) → back onto the input's grid.

``Predictor`` is the one stateful wrapper the CLI (``predict``, ``cv``), the training run's
final validation and the DICOM service share. Models are rebuilt from their checkpoints' own
config, and the preprocessing a model was trained with travels in the checkpoint, so raw input
is prepared exactly as the training data were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transmed.data.labels import regions_to_labels
from transmed.inference.core import predict_probabilities
from transmed.io.nifti import Volume
from transmed.models.base import SegmentationModel
from transmed.training.checkpoint import CheckpointError, load_model_and_checkpoint
from transmed.transforms.preprocess import (
    PreprocessConfig,
    PreprocessRecord,
    invert_probabilities,
    preprocess_case,
)


def find_checkpoints(path: str | Path, prefer: str = "final") -> list[Path]:
    """Checkpoint files for a checkpoint, a run folder, or a cross-validation folder (all folds).

    Raises:
        CheckpointError: nothing usable at ``path``.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    order = [prefer] + [n for n in ("final", "best", "latest") if n != prefer]

    def pick(run: Path) -> Path | None:
        return next((run / "checkpoints" / f"{n}.pt" for n in order
                     if (run / "checkpoints" / f"{n}.pt").is_file()), None)  # fmt: skip

    if (own := pick(path)) is not None:
        return [own]
    folds = sorted(path.glob("fold_*"), key=lambda p: p.name)
    found = [c for c in (pick(f) for f in folds) if c is not None]
    if not found:
        raise CheckpointError(f"{path}: no checkpoint, run folder or cross-validation folder")
    return found


@dataclass
class Predictor:
    """Region probabilities and label maps for preprocessed or raw cases.

    Attributes:
        models: one model, or the folds of a cross-validation (probabilities averaged).
        preprocess: the preprocessing the models were trained with.
        roi_size: sliding-window size (the training patch); ``None`` = whole volume.
        overlap, precision, mirror: see :func:`transmed.inference.core.predict_probabilities`.
    """

    models: list[SegmentationModel]
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.5
    precision: str = "fp32"
    mirror: bool = False
    threshold: float = 0.5

    @classmethod
    def from_path(
        cls, path: str | Path, *, device: str | torch.device = "cpu", prefer: str = "final",
        **kwargs: object,
    ) -> Predictor:  # fmt: skip
        models, patch, prep = [], None, None
        for ckpt_path in find_checkpoints(path, prefer):
            model, ckpt = load_model_and_checkpoint(ckpt_path, device)
            models.append(model)
            patch = tuple(ckpt.get("train_config", {}).get("patch_size") or ()) or None
            prep = ckpt.get("preprocess_config") or prep
        in_ch = {m.in_channels for m in models}
        if len(in_ch) != 1:
            raise CheckpointError(f"{path}: ensemble members take different input channels")
        config = PreprocessConfig(**prep) if prep else PreprocessConfig()
        kwargs.setdefault("roi_size", patch)
        return cls(models, config, **kwargs)  # type: ignore[arg-type]

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(3, D, H, W) mean sigmoid probabilities for a preprocessed (4, D, H, W) image."""
        want = self.models[0].in_channels
        if image.ndim != 4 or image.shape[0] != want:
            raise ValueError(f"model takes ({want}, D, H, W) images, got {tuple(image.shape)}")
        total = None
        for model in self.models:
            p = predict_probabilities(
                model, image, roi_size=self.roi_size, overlap=self.overlap,
                precision=self.precision, mirror=self.mirror,
            )  # fmt: skip
            total = p if total is None else total + p
        return total / len(self.models)

    def labels_on_original_grid(self, image: np.ndarray, record: PreprocessRecord) -> np.ndarray:
        """Internal labels (0–3) on the case's original reference grid."""
        probs = invert_probabilities(self.probabilities(image), record)  # (3, *original)
        return regions_to_labels(probs > self.threshold)

    def predict_volumes(
        self, images: Mapping[str, Volume] | Sequence[Volume], case_id: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw per-modality volumes → (internal labels on the reference grid, its affine)."""
        prepared = preprocess_case(images, None, self.preprocess, case_id=case_id)
        labels = self.labels_on_original_grid(prepared.image, prepared.record)
        return labels, prepared.record.original_affine
