"""The predictor: preprocess → infer (one model or an ensemble) → back onto the input's grid.

``Predictor`` is the one stateful wrapper the CLI (``predict``, ``cv``), the training run's
final validation and the DICOM service share. Models are rebuilt from their checkpoints' own
config, and the preprocessing a model was trained with travels in the checkpoint, so raw input
is prepared exactly as the training data were.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transmed.data.labels import MODALITIES, regions_to_labels
from transmed.inference.core import predict_probabilities
from transmed.inference.memory import default_budget, measure_bytes_per_voxel, whole_volume_bytes
from transmed.inference.postprocess import PostprocessConfig, postprocess_labels
from transmed.io.nifti import Volume
from transmed.models.base import SegmentationModel
from transmed.training.checkpoint import CheckpointError, load_model_and_checkpoint
from transmed.transforms.preprocess import (
    PreprocessConfig,
    PreprocessedCase,
    PreprocessRecord,
    invert_labels,
    invert_probabilities,
    is_exact_grid,
    preprocess_case,
)

MODES = ("auto", "whole", "sliding")
DEFAULT_ROI = (128, 128, 128)  # MONAI/nnU-Net's usual BraTS window when the patch is unknown


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
class Prediction:
    """One case's result on its original reference grid.

    Attributes:
        labels: ``(X, Y, Z)`` uint8 internal labels (0 bg, 1 NCR, 2 ED, 3 ET), post-processed.
        affine: ``(4, 4)`` voxel → RAS mm of that grid.
        probabilities: ``(3, X, Y, Z)`` float32 region probabilities (WT, TC, ET) when asked for.
        window: ``None`` for whole-volume inference, else the sliding-window size used.
        seconds: time per stage (``preprocess``, ``infer``, ``restore``).
    """

    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None = None
    window: tuple[int, int, int] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Predictor:
    """Region probabilities and label maps for preprocessed or raw cases.

    Attributes:
        models: one model, or the folds of a cross-validation (probabilities averaged).
        preprocess: the preprocessing the models were trained with.
        roi_size: sliding-window size (the training patch) when the sliding window is used.
        mode: ``"auto"`` (whole volume when its estimated memory fits ``memory_budget``, else
            sliding window), ``"whole"`` or ``"sliding"``.
        memory_budget: bytes the whole-volume forward may use; ``None`` = half of what is
            available (see :mod:`transmed.inference.memory`).
        overlap, precision, mirror: see :func:`transmed.inference.core.predict_probabilities`.
        postprocess: small-component clean-up on the original grid (``None`` = off).
    """

    models: list[SegmentationModel]
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.5
    precision: str = "fp32"
    mirror: bool = False
    threshold: float = 0.5
    mode: str = "auto"
    memory_budget: int | None = None
    postprocess: PostprocessConfig | None = None
    _bytes_per_voxel: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("Predictor needs at least one model")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {MODES}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.roi_size is not None:
            self.roi_size = tuple(int(s) for s in self.roi_size)  # type: ignore[assignment]
            if len(self.roi_size) != 3 or min(self.roi_size) < 1:
                raise ValueError(f"roi_size: expected three positive sizes, got {self.roi_size}")

    @classmethod
    def from_path(
        cls, path: str | Path, *, device: str | torch.device = "cpu", prefer: str = "final",
        **kwargs: object,
    ) -> Predictor:  # fmt: skip
        """Load a checkpoint, a run folder or a cross-validation folder (ensemble of folds).

        Raises:
            CheckpointError: nothing usable at ``path``, or models that do not take the four
                modalities (the message names the checkpoint file).
        """
        models, patch, prep = [], None, None
        for ckpt_path in find_checkpoints(path, prefer):
            model, ckpt = load_model_and_checkpoint(ckpt_path, device)
            if model.in_channels != len(MODALITIES):
                raise CheckpointError(
                    f"{ckpt_path}: the model takes {model.in_channels} input channels, but "
                    f"prediction feeds the {len(MODALITIES)} modalities {', '.join(MODALITIES)}"
                )
            models.append(model)
            patch = tuple(ckpt.get("train_config", {}).get("patch_size") or ()) or None
            prep = ckpt.get("preprocess_config") or prep
        config = PreprocessConfig(**prep) if prep else PreprocessConfig()
        if kwargs.get("roi_size") is None:
            kwargs["roi_size"] = patch
        return cls(models, config, **kwargs)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return next(self.models[0].parameters()).device

    def window_for(self, shape: Sequence[int]) -> tuple[int, int, int] | None:
        """The sliding-window size for a preprocessed image of spatial ``shape``, or ``None``
        for whole-volume inference (see ``mode`` and ``memory_budget``)."""
        roi = self.roi_size or DEFAULT_ROI
        if self.mode == "sliding":
            return roi
        if self.mode == "whole" or all(s <= r for s, r in zip(shape, roi, strict=True)):
            return None
        need = self.whole_volume_bytes(shape)
        budget = (
            self.memory_budget if self.memory_budget is not None else default_budget(self.device)
        )
        return None if need <= budget else roi

    def whole_volume_bytes(self, shape: Sequence[int]) -> int:
        """Estimated peak working memory of a whole-volume forward on ``shape`` (bytes),
        measured once per predictor (see :mod:`transmed.inference.memory`)."""
        if self._bytes_per_voxel is None:
            self._bytes_per_voxel = max(
                measure_bytes_per_voxel(m, self.device, self.precision) for m in self.models
            )
        divisor = max(getattr(m, "size_divisor", 1) for m in self.models)
        return whole_volume_bytes(self._bytes_per_voxel, shape, divisor)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(3, D, H, W) mean sigmoid probabilities for a preprocessed (4, D, H, W) image."""
        return self._probabilities(image, self.window_for(image.shape[1:]))

    def _probabilities(self, image: np.ndarray, window: tuple[int, int, int] | None) -> np.ndarray:
        want = self.models[0].in_channels
        if image.ndim != 4 or image.shape[0] != want:
            raise ValueError(f"model takes ({want}, D, H, W) images, got {tuple(image.shape)}")
        total = None
        for model in self.models:
            p = predict_probabilities(
                model, image, roi_size=window, overlap=self.overlap,
                precision=self.precision, mirror=self.mirror,
            )  # fmt: skip
            total = p if total is None else total + p
        return total / len(self.models)

    def labels_on_original_grid(self, image: np.ndarray, record: PreprocessRecord) -> np.ndarray:
        """Internal labels (0–3) on the case's original reference grid, post-processed."""
        return self.restore(self.probabilities(image), record).labels

    def restore(
        self, probs: np.ndarray, record: PreprocessRecord, *, keep_probabilities: bool = False
    ) -> Prediction:
        """Network-grid probabilities → labels (and optionally probabilities) on the original
        grid, thresholded, nested (``regions_to_labels``) and post-processed."""
        affine = np.asarray(record.original_affine, dtype=np.float64)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        original = invert_probabilities(probs, record) if keep_probabilities else None
        if is_exact_grid(record):  # no resampling: label the (smaller) cropped network grid
            labels = self._labels(probs, spacing)
            labels = invert_labels(labels, record)
        else:  # resampled: threshold the probabilities on the original grid (nnU-Net's way)
            if original is None:
                original = invert_probabilities(probs, record)  # (3, X, Y, Z)
            labels = self._labels(original, spacing)
            original = original if keep_probabilities else None
        return Prediction(labels, affine, original)

    def _labels(self, probs: np.ndarray, spacing: np.ndarray) -> np.ndarray:
        labels = regions_to_labels(probs > self.threshold)  # nested: ET ⊆ TC ⊆ WT
        if self.postprocess is not None:
            labels = postprocess_labels(labels, spacing, self.postprocess)
        return labels

    def prepare(
        self, images: Mapping[str, Volume] | Sequence[Volume], case_id: str | None = None
    ) -> PreprocessedCase:
        """Raw per-modality volumes → the network-ready case (the checkpoint's preprocessing)."""
        return preprocess_case(images, None, self.preprocess, case_id=case_id)

    def predict_prepared(
        self, prepared: PreprocessedCase, *, keep_probabilities: bool = False
    ) -> Prediction:
        """Infer and restore one prepared case, timing each stage."""
        t0 = time.perf_counter()
        window = self.window_for(prepared.image.shape[1:])
        probs = self._probabilities(prepared.image, window)
        t1 = time.perf_counter()
        result = self.restore(probs, prepared.record, keep_probabilities=keep_probabilities)
        result.window = window
        result.seconds.update(infer=t1 - t0, restore=time.perf_counter() - t1)
        return result

    def predict_case(
        self, images: Mapping[str, Volume] | Sequence[Volume], case_id: str | None = None, *,
        keep_probabilities: bool = False,
    ) -> Prediction:  # fmt: skip
        """Raw per-modality volumes → :class:`Prediction` on the reference grid."""
        t0 = time.perf_counter()
        prepared = self.prepare(images, case_id)
        prep_s = time.perf_counter() - t0
        result = self.predict_prepared(prepared, keep_probabilities=keep_probabilities)
        result.seconds = {"preprocess": prep_s, **result.seconds}
        return result

    def predict_volumes(
        self, images: Mapping[str, Volume] | Sequence[Volume], case_id: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw per-modality volumes → (internal labels on the reference grid, its affine)."""
        result = self.predict_case(images, case_id)
        return result.labels, result.affine
