"""DICOM in, DICOM SEG out: the one DICOM inference path (``transmed predict`` and the node).

``predict_dicom_study`` loads an MR study (:func:`transmed.io.dicom.load_study`), runs the
shared :class:`~transmed.inference.predictor.Predictor` on its four volumes, and writes a
BINARY DICOM SEG that references the reference series (the predictor's reference modality,
T1ce by default) frame by frame, named ``<SEG SOPInstanceUID>.dcm``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transmed.data.labels import MODALITIES, N_CLASSES
from transmed.inference.provenance import seg_summary, write_provenance
from transmed.io.dicom import (
    DicomError,
    DicomSeries,
    DicomStudy,
    ModalityRules,
    is_valid_uid,
    load_study,
    study_log_key,
)
from transmed.io.dicom.seg import build_seg, write_seg
from transmed.io.nifti import DEFAULT_MAX_VOXELS, save_volume
from transmed.transforms import spatial

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from transmed.inference.predictor import Predictor

log = logging.getLogger(__name__)

#: The SEG references this series when the predictor's reference is not a modality ("finest").
DEFAULT_SEG_REFERENCE = "t1ce"


@dataclass
class DicomPrediction:
    """What :func:`predict_dicom_study` wrote.

    Attributes:
        seg_path: the SEG file, ``out_dir/<seg_sop_instance_uid>.dcm``.
        seg_sop_instance_uid: SOPInstanceUID of the SEG.
        study_uid: StudyInstanceUID of the input (and of the SEG).
        reference_series_uid: the series the SEG references (its frames are that series' slices).
        reference_modality: that series' modality.
        series_uids: modality -> SeriesInstanceUID of the input series used.
        timings: seconds for ``load_s`` (headers if a path was given, plus pixel reading),
            ``predict_s`` and ``write_s``.
        nifti_path: the label map as NIfTI (internal labels 0-3), when asked for.
    """

    seg_path: Path
    seg_sop_instance_uid: str
    study_uid: str
    reference_series_uid: str
    reference_modality: str
    series_uids: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    nifti_path: Path | None = None
    provenance_path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)  # series registered rigidly
    other_frame_of_reference: list[str] = field(default_factory=list)
    mode: str | None = None  # the inference mode used: "whole" or "sliding"


def case_key(study_uid: str) -> str:
    """A short, non-identifying case id: ``dicom-`` + :func:`study_log_key` (the node's logs
    name the same study by the same 12 hex characters)."""
    return "dicom-" + study_log_key(study_uid)


def labels_on_series_grid(
    labels: np.ndarray, affine: np.ndarray, series: DicomSeries, *, atol_mm: float = 1e-3
) -> np.ndarray:
    """``labels`` (grid ``affine``) on ``series``' own grid ``(ni, nj, nk)``.

    Unchanged when shape and affine already match (the predictor's reference grid is that
    series' native grid); otherwise nearest-neighbour resampling through the two affines
    (outside the labels' field of view: background).
    """
    if labels.shape == tuple(series.shape) and np.allclose(affine, series.affine, atol=atol_mm):
        return np.asarray(labels, dtype=np.uint8)
    log.info("labels resampled (nearest neighbour) onto the %s grid", series.label)
    grid = spatial.Grid(tuple(series.shape), np.asarray(series.affine, dtype=np.float64))
    return spatial.resample_labels_to_grid(
        np.asarray(labels, dtype=np.uint8), affine, grid, n_classes=N_CLASSES, method="nearest"
    )


def _reference_modality(predictor: Predictor, study: DicomStudy) -> str:
    ref = getattr(predictor.preprocess, "reference", DEFAULT_SEG_REFERENCE)
    ref = ref if ref in MODALITIES else DEFAULT_SEG_REFERENCE
    if ref not in study.series:
        raise DicomError(f"study {study.study_uid}: no {ref} series to reference in the SEG")
    return ref


def predict_dicom_study(
    predictor: Predictor,
    study: str | Path | DicomStudy,
    out_dir: str | Path,
    *,
    rules: ModalityRules | None = None,
    segments: str = "regions",
    write_nifti: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> DicomPrediction:
    """Segment one DICOM MR study and write a DICOM SEG (and optionally a NIfTI label map).

    Args:
        predictor: the loaded model(s) with their preprocessing.
        study: a folder of DICOM files (read with :func:`load_study`) or a loaded study.
        out_dir: where ``<SEG SOPInstanceUID>.dcm`` (and ``.nii.gz``) are written atomically.
        rules: modality rules when ``study`` is a path (defaults otherwise).
        segments: ``"regions"`` (WT, TC, ET) or ``"labels"`` (NCR, ED, ET) SEG segments.
        write_nifti: also write the internal label map (0-3) on the reference series' grid.
        max_voxels: per-series voxel cap when ``study`` is a path.

    Returns:
        :class:`DicomPrediction`.

    Raises:
        DicomError: unreadable study, a modality missing (named), header check failures.
        ValueError: unknown ``segments``.
    """
    t0 = time.perf_counter()
    if not isinstance(study, DicomStudy):
        study = load_study(study, rules=rules, max_voxels=max_voxels,
                           modalities=required_modalities(predictor))  # fmt: skip
    ref = _reference_modality(predictor, study)
    series = study.series[ref]
    volumes = study.volumes()
    # The frame of reference travels with each series: preprocessing registers a series whose
    # FrameOfReferenceUID differs from the reference's without asking the images first.
    info = {m: {"frame_of_reference_uid": s.frame_of_reference_uid,
                "series_instance_uid": s.series_uid} for m, s in study.series.items()}  # fmt: skip
    t1 = time.perf_counter()
    key = case_key(study.study_uid)
    result = predictor.predict_case(volumes, case_id=key, series_info=info)
    labels = labels_on_series_grid(result.labels, result.affine, series)
    decision = (result.record.extra.get("coregistration") or {}) if result.record else {}
    for m in decision.get("other_frame_of_reference", []):
        log.warning("%s: the %s series has another FrameOfReferenceUID than %s: registered "
                    "rigidly", key, m, ref)  # fmt: skip
    t2 = time.perf_counter()
    seg = build_seg(labels, series, segments=segments)
    uid = str(seg.SOPInstanceUID)
    if not is_valid_uid(uid):  # generated here, but it becomes a file name: never trust blindly
        raise DicomError(f"SEG SOPInstanceUID {uid!r} is not a valid UID")
    out_dir = Path(out_dir)
    series_ids = {m: {"series_instance_uid": s.series_uid, "series": s.label}
                  for m, s in study.series.items()}  # fmt: skip
    outputs = [f"{uid}.dcm"] + ([f"{uid}.nii.gz"] if write_nifti else [])
    document = predictor.provenance(result, outputs, case_id=key, series=series_ids)
    _provenance_into_seg(seg, document)
    prov_path = write_provenance(document, out_dir / f"{uid}.dcm")
    try:
        seg_path = write_seg(seg, out_dir / f"{uid}.dcm")
    except BaseException:
        prov_path.unlink(missing_ok=True)  # nothing half: no provenance without its SEG
        raise
    nifti_path = None
    if write_nifti:
        nifti_path = save_volume(labels, series.affine, out_dir / f"{uid}.nii.gz")
    t3 = time.perf_counter()
    timings = {"load_s": t1 - t0, "predict_s": t2 - t1, "write_s": t3 - t2}
    log.info(
        "%s: SEG with %d frame(s) written (load %.2f s, predict %.2f s, write %.2f s)",
        key, int(seg.NumberOfFrames), *timings.values(),
    )  # fmt: skip
    return DicomPrediction(
        seg_path=seg_path, seg_sop_instance_uid=uid, study_uid=study.study_uid,
        reference_series_uid=series.series_uid, reference_modality=ref,
        series_uids=study.series_uids, timings=timings, nifti_path=nifti_path,
        provenance_path=prov_path, warnings=list(document["warnings"]),
        registered=list(decision.get("registered", [])),
        other_frame_of_reference=list(decision.get("other_frame_of_reference", [])),
        mode=result.mode,
    )  # fmt: skip


def required_modalities(predictor: Predictor) -> tuple[str, ...]:
    """The series a study must have for this predictor: all four, or only the reference
    (T1ce) when the model accepts missing series (``missing_modalities="zero"``)."""
    prep = predictor.preprocess
    if getattr(prep, "missing_modalities", "error") == "zero":
        ref = prep.reference if prep.reference in MODALITIES else DEFAULT_SEG_REFERENCE
        return (ref,)
    return tuple(MODALITIES)


def _provenance_into_seg(seg: Dataset, document: dict) -> None:  # type: ignore[type-arg]
    """The provenance's key facts in the SEG: AlgorithmParameters (0066,0032) of each
    segment's algorithm identification, and the model hash in AlgorithmVersion."""
    params = seg_summary(document)
    models = document.get("model") or [{}]
    sha = str(models[0].get("sha256") or "")[:16]
    for item in seg.SegmentSequence:
        for algo in item.get("SegmentationAlgorithmIdentificationSequence", []):
            algo.AlgorithmParameters = params
            if sha:
                version = f"{algo.get('AlgorithmVersion', '')} sha256:{sha}".strip()
                algo.AlgorithmVersion = version[:64]
