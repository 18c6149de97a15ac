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
  prediction; the time the case was open and the time since the first edit; the files written
  (the label map with its SHA-256, which a reopened case checks against the file).

A case opens with its latest saved correction (:func:`transmed.viewer.volumes.load`), and after
a save the loaded case holds the saved labels: a further edit, in this session or a later one,
is saved on top of the earlier ones, never over them from the prediction.

Saves of one case are serialised by a lock held by the caller (:class:`transmed.viewer.app`).
A save is all or nothing (:func:`save_correction`): its files are written complete to temp
files, then renamed into place, the record last; the record names the label map it describes
by its SHA-256, so a reopened case never shows a record's save time for another file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from transmed.data.labels import CLASS_NAMES, from_internal
from transmed.io.atomic import atomic_path
from transmed.io.hashing import file_sha256
from transmed.io.nifti import save_volume
from transmed.viewer.sources import (
    CORRECTED,
    ViewerError,
    correction_paths,
    inside,
    record_path_of,
)
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


class SaveFailed(ViewerError):
    """A save that could not be completed (a write failed): the message says what is on disk."""


def save_correction(
    loaded: LoadedCase, internal: np.ndarray, root: Path, *, timing: dict[str, float]
) -> dict[str, Any]:
    """Write the corrected label map (and SEG), and append the edit to the record.

    All or nothing: the label map, the SEG and the record are each written complete to a
    temporary file beside its target first; only when all three are written are they renamed
    into place, the label map first and the record last. A failure while writing (the SEG
    writer, a full disk) leaves every file, and the labels in memory, as the previous save
    left them. Only a failed rename after the label map's can leave a label map the record
    does not describe; the record's entry names the label file by its SHA-256, so a reopened
    case then says so instead of taking the previous entry's time for the file's
    (:func:`transmed.viewer.volumes.recorded_save`).

    Args:
        loaded: the case in memory: its labels (the prediction, or the last saved correction)
            are what the edit is measured from; they become ``internal`` once saved.
        internal: the corrected internal labels ``(X, Y, Z)`` in the file's voxel order.
        root: the viewed folder; nothing is written outside it.
        timing: ``seconds_open`` and ``seconds_editing`` measured by the page.

    Returns:
        The record entry of this save.

    Raises:
        ViewerError: refused before anything was written (wrong grid, a target that is an
            input or outside ``root``, an unreadable record).
        SaveFailed: a write or rename failed; the message says what is on disk.
    """
    if internal.shape != loaded.internal.shape:
        raise ViewerError(f"corrected labels {internal.shape} != case grid {loaded.internal.shape}")
    nifti_path, seg_path = target_paths(loaded, root)
    inputs = loaded.case.inputs()
    check_target(nifti_path, root, inputs)
    if seg_path is not None:
        check_target(seg_path, root, inputs)
    record_path = record_path_of(nifti_path)
    check_target(record_path, root, inputs)
    record = _read_record(record_path)
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
    record.setdefault("case", loaded.case.case_id)
    record.setdefault("prediction", source.name if source else None)
    record.setdefault("saves", []).append(entry)
    try:
        seg = build_corrected_seg(loaded, internal) if seg_path is not None else None
    except Exception as exc:
        raise _nothing_saved("building the DICOM SEG", exc) from exc
    if seg_path is not None and seg is not None:
        entry["seg"] = seg_path.name
        entry["seg_sop_instance_uid"] = str(seg.SOPInstanceUID)
    staged: list[Path] = []  # the files complete in their temp files, in order
    paths = (nifti_path, seg_path, record_path)
    try:
        _write_all(paths, values.astype(dtype), loaded.grid.affine, seg, record, staged)
    except Exception as exc:
        # a failure while writing renamed nothing; one while renaming may have renamed the
        # label map (first): then it holds this save's labels, and so must the case in memory
        todo = [p for p in paths if p is not None and p not in staged]
        if todo or _sha256(nifti_path) != entry["sha256"]:
            raise _nothing_saved(f"writing {todo[0].name}" if todo else "renaming the files "
                                 "into place", exc) from exc  # fmt: skip
        _show(loaded, internal, values, entry, source)
        stale = [record_path.name]  # renamed last: never in place when a rename failed
        if seg_path is not None and _sop_uid(seg_path) != entry.get("seg_sop_instance_uid"):
            stale.insert(0, seg_path.name)
        raise SaveFailed(f"{nifti_path.name} was saved, but {' and '.join(stale)} could not be "
                         f"updated ({_reason(exc)}): the edit record does not describe the "
                         "saved labels; save again to record them") from exc  # fmt: skip
    _show(loaded, internal, values, entry, source)
    return entry


def _nothing_saved(step: str, exc: BaseException) -> SaveFailed:
    return SaveFailed(f"saving failed while {step} ({_reason(exc)}): nothing was saved, the "
                      "files on disk are unchanged")  # fmt: skip


def _write_all(
    paths: tuple[Path, Path | None, Path], values: np.ndarray, affine: np.ndarray,
    seg: Any, record: dict[str, Any], staged: list[Path],
) -> None:  # fmt: skip
    """Write the label map ``values`` (file order, on ``affine``), the SEG dataset ``seg``
    (DICOM cases, else None) and ``record`` each to a temp file beside its target in
    ``paths`` (label map, SEG or None, record), then rename them into place in that order.

    The record's last entry gets the label map's SHA-256 before the record is written.
    ``staged`` gets each target once its temp file is complete (all of them before the
    first rename), so the caller knows how far a failure got.
    """
    nifti_path, seg_path, record_path = paths
    # ExitStack leaves the atomic_path blocks in reverse order of entry, each renaming its
    # temp file into place (label map, SEG, record); the first rename to fail stops the
    # rest, whose temp files are removed.
    with contextlib.ExitStack() as stack:
        record_tmp = stack.enter_context(atomic_path(record_path, ".json"))
        seg_tmp = stack.enter_context(atomic_path(seg_path, ".dcm")) if seg_path else None
        nifti_tmp = stack.enter_context(atomic_path(nifti_path, ".nii.gz"))
        save_volume(values, affine, nifti_tmp)
        record["saves"][-1]["sha256"] = file_sha256(nifti_tmp)
        staged.append(nifti_path)
        if seg_path is not None and seg_tmp is not None:
            seg_module().write_seg(seg, seg_tmp)
            staged.append(seg_path)
        record_tmp.write_text(json.dumps(record, indent=1) + "\n", "utf-8")
        staged.append(record_path)


def _show(loaded: LoadedCase, internal: np.ndarray, values: np.ndarray, entry: dict[str, Any],
          source: Path | None) -> None:  # fmt: skip
    """The case in memory holds the saved labels: what a reload serves and the next save is
    measured from."""
    shown = {"shown": "correction", "file": entry["corrected"], "saved_at": entry["saved_at"],
             "prediction": source.name if source else None}  # fmt: skip
    loaded.set_labels(internal, values if loaded.file_values is not None else None, shown)


def _reason(exc: BaseException) -> str:
    """``exc`` for a person: an OSError's own text (``[Errno 28] No space left on device``)."""
    return str(exc) or type(exc).__name__


def _sha256(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _sop_uid(path: Path) -> str | None:
    from pydicom import dcmread

    try:
        return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    except Exception:  # missing or unreadable: not this save's
        return None


def _read_record(path: Path) -> dict[str, Any]:
    """The edit record at ``path`` ({} when there is none yet).

    Raises:
        ViewerError: it exists but cannot be read or is not a record (a save would drop
            its earlier entries).
    """
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ViewerError(f"edit record {path.name} is unreadable ({exc}); move it aside to "
                          "save (it would lose its earlier entries)") from None  # fmt: skip
    if not isinstance(data, dict) or not isinstance(data.get("saves", []), list):
        raise ViewerError(f"edit record {path.name} is not an edit record; move it aside to save")
    return data


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

    header = dcmread(tmp, stop_before_pixels=True)
    if str(header.SOPInstanceUID) != sop_uid:  # a save whose record was not written
        tmp.unlink(missing_ok=True)
        raise ViewerError(f"{seg_path.name} is not the SEG of the last recorded save; save again")
    study_uid = str(header.StudyInstanceUID)
    key = study_log_key(study_uid)
    item = OutboxItem(item_id=sop_uid, job_id=f"{job_id}-review", study_key=key)
    return outbox.add(tmp, item)
