"""The predictor: preprocess → infer (one model or an ensemble) → back onto the input's grid.

``Predictor`` is the one stateful wrapper the CLI (``predict``, ``cv``), the training run's
final validation and the DICOM service share. Models are rebuilt from their checkpoints' own
config, and the preprocessing a model was trained with travels in the checkpoint, so raw input
is prepared exactly as the training data were.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transmed.data.labels import MODALITIES, regions_to_labels
from transmed.inference.checkpoint_config import (
    patch_from_checkpoint,
    postprocess_from_checkpoint,
    preprocess_from_checkpoint,
    tta_from_checkpoint,
)
from transmed.inference.core import mirror_axes, predict_probabilities, window_for_mode
from transmed.inference.ensemble import check_fold_agreement
from transmed.inference.memory import measure_bytes_per_voxel, whole_volume_bytes
from transmed.inference.postprocess import PostprocessConfig, postprocess_labels
from transmed.inference.provenance import build_provenance, file_sha256
from transmed.io.nifti import Volume
from transmed.models.base import SegmentationModel
from transmed.models.checkpoint import (
    DEFAULT_INFERENCE_MODE,
    CheckpointError,
    inference_mode,
    load_model_and_checkpoint,
)
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
        mode: the inference mode used, ``"sliding"`` or ``"whole"`` (for the provenance).
        seconds: time per stage (``preprocess``, ``infer``, ``restore``).
    """

    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None = None
    window: tuple[int, int, int] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    mode: str = DEFAULT_INFERENCE_MODE
    record: PreprocessRecord | None = None  # what preprocessing decided (for the provenance)


def _agreed(values: Mapping[Path, Any], what: str) -> Any:
    """The one value every fold records.

    Raises:
        CheckpointError: folds that record different values (the message lists them).
    """
    if len(set(values.values())) > 1:
        raise CheckpointError(f"the folds record different {what}: "
                              + ", ".join(f"{p}: {v}" for p, v in values.items()))  # fmt: skip
    return next(iter(values.values()))


@dataclass
class Predictor:
    """Region probabilities and label maps for preprocessed or raw cases.

    Attributes:
        models: one model, or the folds of a cross-validation (probabilities averaged).
        preprocess: the preprocessing the models were trained with.
        roi_size: sliding-window size (the training patch) when the sliding window is used.
        mode: ``"auto"`` (the mode the checkpoint records, ``model_mode``), ``"whole"`` or
            ``"sliding"``. Never chosen from free memory: the same case and checkpoint give the
            same labels on a busy and an idle machine (see :mod:`transmed.models.checkpoint`).
        model_mode: the inference mode recorded in the checkpoint(s) (``from_path`` sets it).
        memory_budget: with ``mode="whole"``, refuse (``ValueError``) a volume whose
            estimated whole-volume memory exceeds this many bytes, rather than switch to the
            sliding window silently; ``None`` = no check.
        overlap, precision, mirror: see :func:`transmed.inference.core.predict_probabilities`;
            ``from_path`` takes ``mirror`` from the checkpoint (``tta_axes``) unless given.
        postprocess: small-component clean-up on the original grid (``None`` = off).
        inside_mask: probabilities outside the brain (or foreground) mask of preprocessing,
            where the network sees only zeros, are set to 0 before the labels are made.
    """

    models: list[SegmentationModel]
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.5
    precision: str = "fp32"
    mirror: bool | tuple[int, ...] = False
    threshold: float = 0.5
    mode: str = "auto"
    model_mode: str = DEFAULT_INFERENCE_MODE
    memory_budget: int | None = None
    postprocess: PostprocessConfig | None = None
    inside_mask: bool = True  # tumour only inside the mask preprocessing z-scored over
    force: bool = False  # an implausible brain mask: a warning in the provenance, not an error
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # name, path, sha256
    data_profile: dict[str, Any] | None = None  # the training data's (ckpt["data_profile"])
    _bytes_per_voxel: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("Predictor needs at least one model")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {MODES}")
        if self.model_mode not in MODES[1:]:
            raise ValueError(f"model_mode {self.model_mode!r}: expected one of {MODES[1:]}")
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

        Without a ``postprocess`` argument the predictor cleans labels as the checkpoint
        recommends (its ``postprocess`` entry; none recorded: no clean-up).

        Raises:
            CheckpointError: nothing usable at ``path``, or models that do not take the four
                modalities (the message names the checkpoint file).
        """
        models, patch, prep = [], None, None
        loaded: list[tuple[Path, SegmentationModel, dict]] = []  # for the fold agreement check
        modes: dict[Path, str] = {}
        cleanups: dict[Path, PostprocessConfig | None] = {}
        ttas: dict[Path, tuple[int, ...]] = {}
        for ckpt_path in find_checkpoints(path, prefer):
            model, ckpt = load_model_and_checkpoint(ckpt_path, device)
            if model.in_channels != len(MODALITIES):
                raise CheckpointError(
                    f"{ckpt_path}: the model takes {model.in_channels} input channels, but "
                    f"prediction feeds the {len(MODALITIES)} modalities {', '.join(MODALITIES)}"
                )
            models.append(model)
            loaded.append((ckpt_path, model, ckpt))
            check_fold_agreement(loaded)  # preprocessing, patch, output channels; names the fold
            modes[ckpt_path] = inference_mode(ckpt, ckpt_path)
            cleanups[ckpt_path] = postprocess_from_checkpoint(ckpt, ckpt_path)
            ttas[ckpt_path] = tta_from_checkpoint(ckpt, ckpt_path)
            patch = patch_from_checkpoint(ckpt, ckpt_path)
            own = preprocess_from_checkpoint(ckpt, ckpt_path)  # validated, names the file
            if ckpt.get("preprocess_config"):  # none or empty: the default preprocessing
                prep = own
        config = prep if prep is not None else PreprocessConfig()
        if kwargs.get("roi_size") is None:
            kwargs["roi_size"] = patch
        # the folds of an ensemble must run alike
        kwargs.setdefault("model_mode", _agreed(modes, "inference modes"))
        # the checkpoint's own clean-up unless the caller chose one (None: off)
        kwargs.setdefault("postprocess", _agreed(cleanups, "post-processing"))
        # and its own test-time mirroring (none recorded: none)
        if kwargs.get("mirror") is None:
            kwargs["mirror"] = _agreed(ttas, "test-time mirroring (tta_axes)")
        kwargs.setdefault("checkpoints", [
            {"name": (c.get("model_config") or {}).get("name"), "path": str(p),
             "sha256": file_sha256(p)} for p, _, c in loaded
        ])  # fmt: skip
        profiles = [c.get("data_profile") or c.get("training_data") for _, _, c in loaded]
        kwargs.setdefault("data_profile", next((p for p in profiles if isinstance(p, dict)), None))
        return cls(models, config, **kwargs)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return next(self.models[0].parameters()).device

    @property
    def resolved_mode(self) -> str:
        """The inference mode this predictor runs: ``"sliding"`` or ``"whole"``."""
        return self.model_mode if self.mode == "auto" else self.mode

    def window_for(self, shape: Sequence[int]) -> tuple[int, int, int] | None:
        """The sliding-window size for a preprocessed image of spatial ``shape``, or ``None``
        for whole-volume inference: fixed by :attr:`resolved_mode`, whatever memory is free.

        Raises:
            ValueError: ``mode="whole"`` with a ``memory_budget`` the volume does not fit.
        """
        window = window_for_mode(self.resolved_mode, self.roi_size or DEFAULT_ROI)
        if window is None and self.memory_budget is not None:
            need = self.whole_volume_bytes(shape)
            if need > self.memory_budget:
                raise ValueError(
                    f"whole-volume inference on {tuple(shape)} voxels needs about "
                    f"{need / 2**30:.1f} GiB, over the memory budget of "
                    f"{self.memory_budget / 2**30:.1f} GiB; use the sliding window (--mode "
                    "sliding) or a larger --memory-budget"
                )
        return window

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
            labels = postprocess_labels(labels, spacing, self.postprocess,
                                        et_probability=probs[2])  # fmt: skip
        return labels

    def prepare(
        self, images: Mapping[str, Volume] | Sequence[Volume], case_id: str | None = None,
        series_info: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> PreprocessedCase:  # fmt: skip
        """Raw per-modality volumes → the network-ready case (the checkpoint's preprocessing;
        ``series_info``: per modality, e.g. the DICOM ``frame_of_reference_uid``)."""
        return preprocess_case(
            images, None, self.preprocess, case_id=case_id, series_info=series_info,
            force=self.force, device=str(self.device),
        )  # fmt: skip

    def provenance(
        self, result: Prediction, outputs: Sequence[str | Path], *, case_id: str | None = None,
        series: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The provenance document of ``result`` (see :mod:`transmed.inference.provenance`)."""
        record = result.record
        return build_provenance(
            case_id=case_id if case_id is not None else (record.case_id if record else None),
            outputs=outputs, models=self.checkpoints or [
                {"name": getattr(m, "config", {}).get("name"), "path": None, "sha256": None}
                for m in self.models],
            preprocess=dataclasses.asdict(self.preprocess),
            record_extra=record.extra if record is not None else {},
            inference={"mode": result.mode, "window": list(result.window) if result.window
                       else None, "precision": self.precision,
                       "tta": list(mirror_axes(self.mirror)) or False,
                       "device": str(self.device), "ensemble": len(self.models),
                       "postprocess": dataclasses.asdict(self.postprocess)
                       if self.postprocess is not None else None,
                       "inside_mask": self.inside_mask},
            seconds=result.seconds, training_profile=self.data_profile, series=series,
        )  # fmt: skip

    def predict_prepared(
        self, prepared: PreprocessedCase, *, keep_probabilities: bool = False
    ) -> Prediction:
        """Infer and restore one prepared case, timing each stage."""
        t0 = time.perf_counter()
        window = self.window_for(prepared.image.shape[1:])
        probs = self._probabilities(prepared.image, window)
        if self.inside_mask and prepared.mask is not None:
            # the image is 0 outside the brain (or foreground) mask: whatever the network says
            # there is extrapolation (seen: oedema on the frontal sinus of TCGA-FG-6692)
            probs[:, ~prepared.mask] = 0.0
        if self.preprocess.bias_correction == "n4_two_pass":
            probs = self._second_pass(prepared, probs, window)
        t1 = time.perf_counter()
        result = self.restore(probs, prepared.record, keep_probabilities=keep_probabilities)
        result.window = window
        result.mode = "whole" if window is None else "sliding"
        result.record = prepared.record
        result.seconds.update(infer=t1 - t0, restore=time.perf_counter() - t1)
        return result

    def _second_pass(self, prepared: PreprocessedCase, probs: np.ndarray,
                     window: tuple[int, int, int] | None) -> np.ndarray:  # fmt: skip
        """``bias_correction="n4_two_pass"``: N4 fitted in the brain minus the first pass's WT
        (dilated by 3 voxels), the image z-scored again, the network run again."""
        from scipy import ndimage

        from transmed.transforms.bias_field import renormalise_without

        t0 = time.perf_counter()
        record = prepared.record
        mask = prepared.mask if prepared.mask is not None else np.any(prepared.image != 0, 0)
        tumour = ndimage.binary_dilation(probs[0] > self.threshold, iterations=3)
        image, info = renormalise_without(prepared.image, mask, record.intensity_mean,
                                          record.intensity_std, tumour, record.spacing)
        names = list(record.modalities)
        info["field_range"] = {names[c] if c < len(names) else str(c): v
                               for c, v in info["field_range"].items()}  # fmt: skip
        probs = self._probabilities(image, window)
        if self.inside_mask:
            probs[:, ~mask] = 0.0
        record.extra["bias_correction"] = {"mode": "n4_two_pass", **info,
                                           "seconds": round(time.perf_counter() - t0, 2)}
        return probs

    def predict_case(
        self, images: Mapping[str, Volume] | Sequence[Volume], case_id: str | None = None, *,
        keep_probabilities: bool = False,
        series_info: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Prediction:  # fmt: skip
        """Raw per-modality volumes → :class:`Prediction` on the reference grid."""
        t0 = time.perf_counter()
        prepared = self.prepare(images, case_id, series_info)
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
