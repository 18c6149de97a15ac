"""Predict many cases with one loaded predictor, reading and writing beside the compute.

Three stages run at once, one case apart: a reader thread loads and preprocesses case n+1
(nibabel's gzip and numpy release the GIL), the calling thread runs the network on case n
(PyTorch releases the GIL), and a writer thread writes case n−1. At most three cases are in
memory. Every output is written atomically; a case that fails is recorded with its error and
the others go on.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from transmed.data.cases import Case
from transmed.data.labels import MODALITIES
from transmed.data.layouts import load_case
from transmed.data.writing import prediction_path, write_prediction
from transmed.inference.predictor import Prediction, Predictor
from transmed.inference.provenance import write_provenance
from transmed.io.nifti import DEFAULT_MAX_VOXELS, load_volume, save_volume
from transmed.transforms.preprocess import PreprocessedCase

log = logging.getLogger(__name__)

#: Exceptions that fail one case (bad input or a model that does not fit it), not the batch.
CASE_ERRORS = (ValueError, OSError, EOFError, RuntimeError, MemoryError)


@dataclass
class CaseResult:
    """What happened to one case (``predict_summary.json`` holds one per case)."""

    case_id: str
    ok: bool
    outputs: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    window: list[int] | None = None  # None: whole volume
    error: str | None = None
    mode: str | None = None  # the inference mode used: "whole" or "sliding"
    warnings: list[str] = field(default_factory=list)  # as in the case's provenance


def save_probabilities(probs: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Region probabilities ``(3, X, Y, Z)`` as a 4D NIfTI ``(X, Y, Z, 3)`` (WT, TC, ET).

    Stored as uint8 with NIfTI scaling (steps of 1/255), a quarter of float32's size; readers
    that apply ``scl_slope`` (nibabel, ITK, MONAI) get float probabilities back.
    """
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    data = np.moveaxis(np.clip(probs, 0.0, 1.0), 0, -1).astype(np.float32)
    return save_volume(data, affine, path, header=header)


@dataclass
class BatchWriter:
    """Where and how results are written: label maps in the input's label convention."""

    out_dir: Path
    layout: str
    output_file: Path | None = None  # single case: write exactly this file
    probabilities: bool = False
    #: (case, prediction, output names) -> provenance document; None: no provenance file
    provenance: Callable[[Case, Prediction, list[str]], dict[str, Any]] | None = None
    all_grids: bool = False  # also <stem>_on_<modality> on each input series' grid

    def label_path(self, case: Case) -> Path:
        return self.output_file or prediction_path(self.out_dir, case.case_id)

    def write(self, case: Case, result: Prediction) -> list[str]:
        """Write a case's files as one unit: all of them into a hidden staging folder beside
        their destination, then each renamed into place. On any error (a full disk on the
        second file) none of the case's files is left behind."""
        path = self.label_path(case)
        ending = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
        stem = path.name[: -len(ending)]
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".staging", dir=path.parent))
        placed: list[Path] = []
        try:
            staged = [write_prediction(
                result.labels, result.affine, staging, stem, self.layout,
                convention=case.convention, file_ending=ending,
            )]  # fmt: skip
            if self.probabilities and result.probabilities is not None:
                prob_name = f"{stem}_probabilities{ending}"
                staged.append(
                    save_probabilities(result.probabilities, result.affine, staging / prob_name)
                )
            if self.all_grids:  # the label map on every input series' own grid too
                staged += _on_series_grids(case, result, staging, stem, ending, self.layout)
            if self.provenance is not None:  # <stem>.provenance.json beside the label map
                document = self.provenance(case, result, [p.name for p in staged])
                staged.append(write_provenance(document, staging / f"{stem}{ending}"))
            for src in staged:
                os.replace(src, path.parent / src.name)
                placed.append(path.parent / src.name)
        except BaseException:
            for done in placed:  # a rename failed half-way: take back the ones that landed
                done.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return [str(p) for p in placed]


def _on_series_grids(
    case: Case, result: Prediction, folder: Path, stem: str, ending: str, layout: str
) -> list[Path]:
    """``result.labels`` resampled (nearest neighbour) onto each input series' own grid, as
    ``<stem>_on_<modality><ending>`` in the layout's label values; the reference's is a copy.

    A series that was registered rigidly to the reference (its head moved) gets the labels
    through that registration: they are sampled where the series' voxels lie after the
    correction (``inv(M) @ affine``, as preprocessing placed them) and written with the
    series' own header affine, so they overlay the series as the scanner stored it."""
    from transmed.data.labels import N_CLASSES
    from transmed.transforms import spatial

    rigid: dict[str, object] = {}
    if result.record is not None:
        extra = result.record.extra or {}
        rigid = dict(extra.get("rigid_world_transforms") or {})
        for m, reg in (extra.get("registration") or {}).items():
            if isinstance(reg, dict) and reg.get("method") == "rigid" and "world_transform" in reg:
                rigid.setdefault(m, reg["world_transform"])
    written = []
    for modality, image_path in case.images.items():
        header = nib.load(str(image_path))  # header only: the grid
        own = np.asarray(header.affine, dtype=np.float64)
        placed = own
        if modality in rigid:
            placed = np.linalg.inv(np.asarray(rigid[modality], dtype=np.float64)) @ own
        grid = spatial.Grid(tuple(int(s) for s in header.shape[:3]), placed)
        labels = spatial.resample_labels_to_grid(
            result.labels, result.affine, grid, n_classes=N_CLASSES, method="nearest"
        )
        written.append(write_prediction(
            labels, own, folder, f"{stem}_on_{modality}", layout,
            convention=case.convention, file_ending=ending,
        ))  # fmt: skip
    return written


def _prepare(
    predictor: Predictor, case: Case, max_voxels: int
) -> tuple[PreprocessedCase, dict[str, float]]:
    t0 = time.perf_counter()
    complete = set(case.images) == set(MODALITIES)
    lenient = predictor.preprocess.missing_modalities == "zero"
    if complete or (case.missing and not lenient):
        images = load_case(case, max_voxels=max_voxels).images  # names a missing file
    else:  # a series missing: preprocessing decides whether the model takes it
        images = {m: load_volume(p, max_voxels=max_voxels) for m, p in case.images.items()}
    t1 = time.perf_counter()
    prepared = predictor.prepare(images, case.case_id)
    return prepared, {"read": t1 - t0, "preprocess": time.perf_counter() - t1}


def _message(case: Case, exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if case.case_id in text else f"case {case.case_id}: {text}"


def predict_batch(
    predictor: Predictor,
    cases: list[Case],
    writer: BatchWriter,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Predict ``cases`` in order with read/compute/write overlapped; one result per case."""
    results: list[CaseResult] = []

    def record(res: CaseResult) -> None:
        results.append(res)
        if on_result:
            on_result(res)

    def timed_write(case: Case, result: Prediction) -> list[str]:
        t0 = time.perf_counter()
        out = writer.write(case, result)
        result.seconds["write"] = time.perf_counter() - t0
        return out

    def finish(pending: tuple[CaseResult, Case, Future] | None) -> None:
        """Wait for the previous case's write and record its result."""
        if pending is None:
            return
        res, case, fut = pending
        t0 = time.perf_counter()
        try:
            res.outputs = fut.result()
        except CASE_ERRORS as exc:
            res.ok, res.error = False, _message(case, exc)
        res.seconds["write_wait"] = time.perf_counter() - t0
        record(res)

    with (
        ThreadPoolExecutor(1, thread_name_prefix="transmed-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="transmed-write") as write_pool,
    ):

        def load(case: Case) -> Future:
            return reader.submit(_prepare, predictor, case, max_voxels)

        loads: deque[Future] = deque([load(cases[0])] if cases else [])
        pending: tuple[CaseResult, Case, Future] | None = None
        for i, case in enumerate(cases):
            fut = loads.popleft()
            if i + 1 < len(cases):  # one load in flight ahead of the case being computed
                loads.append(load(cases[i + 1]))
            res = CaseResult(case.case_id, ok=True)
            try:
                prepared, seconds = fut.result()
                del fut  # the future holds the case's arrays
                prediction = predictor.predict_prepared(
                    prepared, keep_probabilities=writer.probabilities
                )
                del prepared
            except CASE_ERRORS as exc:
                log.info("%s", _message(case, exc))
                res.ok, res.error = False, _message(case, exc)
                finish(pending)
                pending = None
                record(res)
                continue
            prediction.seconds.update(seconds)
            res.seconds = prediction.seconds  # the writer thread adds "write" to this dict
            res.window = list(prediction.window) if prediction.window else None
            res.mode = prediction.mode
            if prediction.record is not None:
                res.warnings = list(prediction.record.extra.get("warnings", []))
            finish(pending)
            pending = (res, case, write_pool.submit(timed_write, case, prediction))
        finish(pending)
    return results


def summary(results: list[CaseResult], **extra: Any) -> dict[str, Any]:
    """The JSON summary of a batch: counts, failures, per-case records."""
    failed = [r for r in results if not r.ok]
    return {
        **extra,
        "cases": len(results),
        "succeeded": len(results) - len(failed),
        "failed": len(failed),
        "failures": {r.case_id: r.error for r in failed},
        "results": [asdict(r) for r in results],
    }
