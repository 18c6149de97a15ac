"""Saving a correction: next to the prediction, never over an input, atomically, recorded.

- NIfTI: ``<prediction stem>_corrected.nii.gz`` on the prediction's grid. Voxels the reviewer
  did not change keep the prediction file's own values byte for byte; changed voxels get the
  input convention's value for their new class (:func:`transmed.data.labels.from_internal`).
- DICOM: also ``<SEG stem>_corrected.dcm``, a new SEG (new series and instance UIDs) built by
  the project's SEG writer on the same T1ce series, every segment's algorithm type
  SEMIAUTOMATIC and the series description saying it was manually corrected.
- ``<stem>_corrected.json``: one entry per save: voxels changed per label (added/removed)
  since the labels the save started from (``edited_from``: the prediction, or the correction
  saved before, in this session or an earlier one) and, in ``since_prediction``, since the
  prediction; the time the case was open and the time since the first edit; the files written.

A case opens with its latest saved correction (:func:`transmed.viewer.volumes.load`), and after
a save the loaded case holds the saved labels: a further edit, in this session or a later one,
is saved on top of the earlier ones, never over them from the prediction.

Saves of one case are serialised by a lock held by the caller (:class:`transmed.viewer.app`);
each file is renamed into place complete, so the last complete save wins.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from transmed.data.labels import CLASS_NAMES, from_internal
from transmed.io.atomic import atomic_write_text
from transmed.io.nifti import save_volume
from transmed.viewer.sources import CORRECTED, ViewerError, correction_paths, inside
from transmed.viewer.volumes import LoadedCase

SERIES_DESCRIPTION = "TransMed segmentation, manually corrected"
CONTENT_LABEL = "TRANSMED_CORR"
SERIES_NUMBER = 901


def seg_module() -> ModuleType:
    """The project's DICOM SEG writer/reader (``io.dicom.seg``, formerly ``io.dicom_seg``)."""
    try:
        from transmed.io.dicom import seg
    except ImportError:  # before the move into the io.dicom package
        from transmed.io import dicom_seg as seg
    return seg


def target_paths(loaded: LoadedCase, root: Path) -> tuple[Path, Path | None]:
    """(corrected label map, corrected SEG or None) for ``loaded``'s case."""
    return correction_paths(loaded.case, root)


def check_target(path: Path, root: Path, inputs: set[Path]) -> None:
    """Refuse a target outside ``root`` (symlinks resolved) or equal to an input file."""
    if path.is_symlink() or not inside(path.parent if not path.exists() else path, (root,)):
        raise ViewerError(f"{path.name}: refusing to write outside the viewed folder")
    if path.resolve() in inputs or CORRECTED not in path.name:
        raise ViewerError(f"{path.name}: refusing to write over an input file")


def edit_counts(old: np.ndarray, new: np.ndarray) -> dict[str, Any]:
    """Voxels changed in total and, per label, added and removed."""
    changed = old != new
    per_label = {}
    for c in (1, 2, 3):
        added = int(np.count_nonzero(changed & (new == c)))
        removed = int(np.count_nonzero(changed & (old == c)))
        per_label[CLASS_NAMES[c]] = {"label": c, "added": added, "removed": removed}
    return {"voxels_changed": int(np.count_nonzero(changed)), "per_label": per_label}


def build_corrected_seg(loaded: LoadedCase, internal: np.ndarray) -> Any:
    """A new SEG of ``internal`` on the case's T1ce series, marked as manually corrected."""
    _, series = loaded.dicom
    seg_mod = seg_module()
    segments = "regions"
    if loaded.case.seg is not None:
        from pydicom import dcmread

        labels = {str(s.SegmentLabel) for s in dcmread(loaded.case.seg).SegmentSequence}
        segments = "labels" if "NCR" in labels else "regions"
    seg = seg_mod.build_seg(
        internal, series, segments=segments, series_number=SERIES_NUMBER,
        series_description=SERIES_DESCRIPTION, content_label=CONTENT_LABEL,
    )  # fmt: skip
    for desc in seg.SegmentSequence:  # a person corrected the algorithm's output
        desc.SegmentAlgorithmType = "SEMIAUTOMATIC"
    seg.ContentDescription = "TransMed segmentation corrected by a reviewer in transmed view"
    return seg


def save_correction(
    loaded: LoadedCase, internal: np.ndarray, root: Path, *, timing: dict[str, float]
) -> dict[str, Any]:
    """Write the corrected label map (and SEG), and append the edit to the record.

    Args:
        loaded: the case in memory: its labels (the prediction, or the last saved correction)
            are what the edit is measured from; they become ``internal`` once saved.
        internal: the corrected internal labels ``(X, Y, Z)`` in the file's voxel order.
        root: the viewed folder; nothing is written outside it.
        timing: ``seconds_open`` and ``seconds_editing`` measured by the page.

    Returns:
        The record entry of this save.
    """
    if internal.shape != loaded.internal.shape:
        raise ViewerError(f"corrected labels {internal.shape} != case grid {loaded.internal.shape}")
    nifti_path, seg_path = target_paths(loaded, root)
    inputs = loaded.case.inputs()
    check_target(nifti_path, root, inputs)
    if seg_path is not None:
        check_target(seg_path, root, inputs)
    internal = np.ascontiguousarray(internal, dtype=np.uint8)
    old = loaded.internal
    original = loaded.original if loaded.original is not None else old
    changed = old != internal
    base = loaded.file_values
    if base is None:
        base = from_internal(old, loaded.convention)
    values = np.array(base, dtype=np.int32, copy=True)
    values[changed] = from_internal(internal[changed], loaded.convention)
    dtype = np.uint8 if values.max(initial=0) <= 255 and values.min(initial=0) >= 0 else np.int16
    source = loaded.case.prediction or loaded.case.seg
    entry: dict[str, Any] = {
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "corrected": nifti_path.name,
        "label_convention": loaded.convention.name,
        "edited_from": loaded.labels_from.get("file"),
        **edit_counts(old, internal),
        "since_prediction": edit_counts(original, internal),
        "seconds_open": round(float(timing.get("seconds_open", 0.0)), 1),
        "seconds_editing": round(float(timing.get("seconds_editing", 0.0)), 1),
        "volumes_ml": loaded.volumes_ml(internal),
    }
    save_volume(values.astype(dtype), loaded.grid.affine, nifti_path)
    # From here the file on disk is this save's: so are the case's labels in memory (what a
    # reload serves and the next save is measured from), even if the SEG or record fail below.
    shown = {"shown": "correction", "file": nifti_path.name, "saved_at": entry["saved_at"],
             "prediction": source.name if source else None}  # fmt: skip
    loaded.set_labels(internal, values if loaded.file_values is not None else None, shown)
    if seg_path is not None:
        seg = build_corrected_seg(loaded, internal)
        seg_module().write_seg(seg, seg_path)
        entry["seg"] = seg_path.name
        entry["seg_sop_instance_uid"] = str(seg.SOPInstanceUID)
    record_path = nifti_path.parent / nifti_path.name.replace(".nii.gz", ".json")
    record = _read_record(record_path)
    record.setdefault("case", loaded.case.case_id)
    record.setdefault("prediction", source.name if source else None)
    record.setdefault("saves", []).append(entry)
    atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    return entry


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def queue_in_outbox(
    root: Path, job_id: str, seg_path: Path, sop_uid: str, outbox: Any = None
) -> Any:
    """Put a corrected SEG in the node's outbox (``root/outbox``) for delivery, exactly once.

    The outbox moves the file in; a copy is moved so the reviewer's SEG stays in ``review/``.
    The same SEG (same SOP Instance UID) is never queued twice. ``outbox``: the viewer's own
    :class:`~transmed.service.outbox.Outbox` when it delivers (``--serve-config``); else the
    item waits on disk and the node delivers it when it next starts (``Outbox.recover``).

    Raises:
        ViewerError: already queued.
    """
    from transmed.service.keys import study_log_key
    from transmed.service.outbox import Outbox, OutboxItem

    outbox = outbox or Outbox(root)
    if (outbox.root / f"{sop_uid}.json").exists():
        raise ViewerError(f"SEG {sop_uid} is already in the outbox; it is sent once")
    tmp = seg_path.parent / f".{seg_path.name}.outbox"
    shutil.copyfile(seg_path, tmp)
    from pydicom import dcmread

    study_uid = str(dcmread(tmp, stop_before_pixels=True).StudyInstanceUID)
    key = study_log_key(study_uid)
    item = OutboxItem(item_id=sop_uid, job_id=f"{job_id}-review", study_key=key)
    return outbox.add(tmp, item)
