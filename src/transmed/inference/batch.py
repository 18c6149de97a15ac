"""Predict many cases with one loaded predictor, reading and writing beside the compute.

Three stages run at once, one case apart: a reader thread loads and preprocesses case n+1
(nibabel's gzip and numpy release the GIL), the calling thread runs the network on case n
(PyTorch releases the GIL), and a writer thread writes case n−1. At most three cases are in
memory. Every output is written atomically; a case that fails is recorded with its error and
the others go on.
"""

from __future__ import annotations

import logging
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
from transmed.data.layouts import load_case
from transmed.data.writing import prediction_path, write_prediction
from transmed.inference.predictor import Prediction, Predictor
from transmed.io.nifti import DEFAULT_MAX_VOXELS, save_volume
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

    def label_path(self, case: Case) -> Path:
        return self.output_file or prediction_path(self.out_dir, case.case_id)

    def write(self, case: Case, result: Prediction) -> list[str]:
        path = self.label_path(case)
        ending = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
        stem = path.name[: -len(ending)]
        written = write_prediction(
            result.labels, result.affine, path.parent, stem, self.layout,
            convention=case.convention, file_ending=ending,
        )  # fmt: skip
        outputs = [str(written)]
        if self.probabilities and result.probabilities is not None:
            prob_path = path.parent / f"{stem}_probabilities{ending}"
            outputs.append(str(save_probabilities(result.probabilities, result.affine, prob_path)))
        return outputs


def _prepare(
    predictor: Predictor, case: Case, max_voxels: int
) -> tuple[PreprocessedCase, dict[str, float]]:
    t0 = time.perf_counter()
    volumes = load_case(case, max_voxels=max_voxels)
    t1 = time.perf_counter()
    prepared = predictor.prepare(volumes.images, case.case_id)
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
