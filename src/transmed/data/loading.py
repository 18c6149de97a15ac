"""Load a case's voxels after validating its headers; iterate a dataset, skipping bad cases.

Images come back in :data:`~transmed.data.labels.MODALITIES` order, each as a float32
:class:`~transmed.io.nifti.Volume` with **its own** affine (modalities may sit on different
grids; co-registration is the preprocessing stage's job). The label comes back converted to the
internal convention (uint8, 0 background, 1 core, 2 oedema, 3 enhancing) or None.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transmed.data.cases import Case, DatasetIndex
from transmed.data.labels import MODALITIES, LabelConvention, to_internal
from transmed.data.validation import DEFAULT_MIN_OVERLAP, case_problems
from transmed.io.nifti import DEFAULT_MAX_VOXELS, Volume, check_nifti_header, load_volume

logger = logging.getLogger(__name__)


@dataclass
class CaseVolumes:
    """A loaded case: ``images[m]`` float32 ``(X, Y, Z)``; ``label`` uint8 internal, or None."""

    case: Case
    images: dict[str, Volume]  # keys in MODALITIES order, each with its own affine
    label: Volume | None

    @property
    def case_id(self) -> str:
        return self.case.case_id


def load_label(
    path: Path,
    convention: str | LabelConvention,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read a label map and convert it to internal labels (uint8).

    The file's own dtype is read (no float32 copy of a uint8 map); values are checked by
    :func:`~transmed.data.labels.to_internal`, so unexpected, negative, fractional or
    non-finite values raise a ValueError naming the file and the values.
    """
    img = check_nifti_header(path, max_voxels=max_voxels)
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated gzip, short file, ...
        raise ValueError(f"{path}: voxel data unreadable or truncated ({exc})") from None
    raw = raw.reshape(raw.shape[:3])  # header check allows only trailing singleton dims
    internal = to_internal(raw, convention, source=path)
    return Volume(data=internal, affine=np.asarray(img.affine, dtype=np.float64), path=path)


def load_case(
    case: Case,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    *,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> CaseVolumes:
    """Validate a case's headers, then read its images and label.

    Raises:
        ValueError: naming the case, the file and the problem: a missing modality, a bad header
            (voxel cap, spacing, affine), modalities that do not overlap in space, a label off
            the image grid, unreadable data, non-finite voxels, or unexpected label values.
    """
    problems = case_problems(case, max_voxels=max_voxels, min_overlap=min_overlap)
    if problems:
        raise ValueError(f"case {case.case_id}: " + "; ".join(problems))
    try:
        images: dict[str, Volume] = {}
        four_d: dict[Path, Volume] = {}
        for modality in MODALITIES:
            path = case.images[modality]
            if modality in case.channels:  # MSD: one 4D file, read once, sliced per channel
                if path not in four_d:
                    four_d[path] = load_volume(path, max_voxels=max_voxels, allow_4d=True)
                whole = four_d[path]
                channel = np.ascontiguousarray(whole.data[..., case.channels[modality]])
                images[modality] = Volume(channel, whole.affine.copy(), path)
            else:
                images[modality] = load_volume(path, max_voxels=max_voxels)
        label = None
        if case.label is not None:
            label = load_label(case.label, case.convention or case.layout, max_voxels=max_voxels)
    except ValueError as exc:
        raise ValueError(f"case {case.case_id}: {exc}") from None
    return CaseVolumes(case=case, images=images, label=label)


def iter_cases(
    index: DatasetIndex,
    strict: bool = False,
    *,
    case_ids: Collection[str] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> Iterator[CaseVolumes]:
    """Load the index's cases one at a time, skipping bad ones.

    A case that the index already flagged is skipped; one that fails to load is logged as a
    warning, appended to ``index.problems`` and skipped. With ``strict`` the first bad case (or
    any dataset-level problem, such as a stray label file) raises ValueError instead.

    Args:
        case_ids: only these cases (e.g. one fold), in index order; None for all.
    """
    case_keys = {c.case_id for c in index.cases}
    if strict:
        general = [f"{key}: {msg}" for key, msg in index.problems if key not in case_keys]
        if general:
            raise ValueError(f"{index.root}: " + "; ".join(general))
    flagged = index.bad_case_ids
    for case in index.cases:
        if case_ids is not None and case.case_id not in case_ids:
            continue
        if case.case_id in flagged:
            message = f"case {case.case_id}: " + "; ".join(index.problems_of(case.case_id))
            if strict:
                raise ValueError(message)
            logger.warning("skipping %s", message)
            continue
        try:
            yield load_case(case, max_voxels, min_overlap=min_overlap)
        except ValueError as exc:
            if strict:
                raise
            index.problems.append((case.case_id, str(exc)))
            logger.warning("skipping %s", exc)
