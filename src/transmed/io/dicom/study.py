"""Stage 4: one study, one series per modality, the choice among duplicates recorded.

:func:`load_study` scans a folder, maps series to modalities with :class:`ModalityRules` and
checks the chosen series' headers; :meth:`DicomStudy.volumes` reads the pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from transmed.data.labels import MODALITIES
from transmed.io.dicom.errors import DicomError, is_valid_uid, malformed_header
from transmed.io.dicom.rules import ModalityRules
from transmed.io.dicom.scan import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    SkippedFile,
    scan_folder,
)
from transmed.io.dicom.series import DicomSeries
from transmed.io.nifti import DEFAULT_MAX_VOXELS, Volume

#: The package's logger, named as before the split, so logging set up for it keeps working.
log = logging.getLogger("transmed.io.dicom")


@dataclass
class SeriesChoice:
    """How the series of one modality was chosen among several candidates (best first)."""

    modality: str
    chosen: str  # SeriesInstanceUID
    candidates: list[str]
    refused: dict[str, str] = field(default_factory=dict)  # series UID -> why it was refused


@dataclass
class DicomStudy:
    """One MR study: the series chosen per modality, plus what was left out.

    Attributes:
        study_uid: StudyInstanceUID.
        series: modality -> the chosen :class:`DicomSeries`.
        unmatched: (series UID, description) of MR series no rule matched (DWI, localizers, ...).
        choices: modality -> the candidates and the reason for the choice.
        skipped: files left out by the scan.
        max_voxels: the cap applied by :meth:`volumes`.
    """

    study_uid: str
    series: dict[str, DicomSeries]
    unmatched: list[tuple[str, str]] = field(default_factory=list)
    choices: dict[str, SeriesChoice] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    max_voxels: int = DEFAULT_MAX_VOXELS

    def volumes(self) -> dict[str, Volume]:
        """modality -> float32 :class:`Volume` on that series' native grid, in MODALITIES order."""
        return {m: self.series[m].volume(self.max_voxels) for m in MODALITIES if m in self.series}

    @property
    def series_uids(self) -> dict[str, str]:
        return {m: s.series_uid for m, s in self.series.items()}


def _rank(items: Sequence[tuple[Path, Dataset]]) -> tuple[int, int, int]:
    """Sort key among series of one modality (higher is better): ORIGINAL over DERIVED images,
    then more instances / frames, then the later SeriesNumber."""
    ds = items[0][1]
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    original = int(not image_type or image_type[0] == "ORIGINAL")
    n = sum(int(d.get("NumberOfFrames") or 1) for _, d in items)
    number = ds.get("SeriesNumber")
    return original, n, int(number) if number is not None else -1


def load_study(
    folder: str | Path,
    *,
    rules: ModalityRules | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    study_uid: str | None = None,
    modalities: Sequence[str] = MODALITIES,
    max_files: int = DEFAULT_MAX_FILES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> DicomStudy:
    """Scan ``folder``, map series to modalities and check the chosen series' headers.

    No pixel data are read here; :meth:`DicomStudy.volumes` reads them.

    Duplicate modalities: when several series match one modality, candidates are ranked by
    (ORIGINAL before DERIVED ImageType, more slices, higher SeriesNumber, then SeriesInstanceUID)
    and the first one that passes the header checks is taken; the ranking and any refusals are
    recorded in :attr:`DicomStudy.choices` and logged.

    Args:
        folder: a folder (searched recursively) or a single multi-frame file.
        rules: modality rules; :meth:`ModalityRules.default` when ``None``.
        max_voxels: cap per series, checked from the headers.
        study_uid: the study to read when the folder holds several.
        modalities: the modalities that must be present.

    Raises:
        DicomError: an MR file cut short before its pixel data (it may be a slice of any
            series, so the whole study is refused), no MR series, several studies without
            ``study_uid``, a required modality without a usable series (the message names the
            modality), any header check failure of the only candidate of a modality, or a
            series over ``max_voxels``.
    """
    rules = rules or ModalityRules.default()
    scan = scan_folder(folder, max_files=max_files, max_file_bytes=max_file_bytes)
    name = Path(folder).name
    broken = scan.unattributed + list(scan.problems.values())
    if broken:
        # Refusing the study is the only safe answer: a header cut short may even carry a cut
        # (still well-formed) series UID, so the file may be a missing slice of any series.
        raise DicomError(f"{name}: {broken[0]}" + (f" (and {len(broken) - 1} more)"
                                                  if len(broken) > 1 else ""))  # fmt: skip
    studies = scan.study_uids
    if study_uid is not None:
        if not is_valid_uid(study_uid):
            raise DicomError(f"{name}: malformed study UID {study_uid!r}")
        if study_uid not in studies:
            raise DicomError(f"{name}: study {study_uid} not found")
        studies = {study_uid}
    if not studies:
        reasons = sorted({s.reason for s in scan.skipped})[:3]
        raise DicomError(f"{name}: no MR images found (skipped: {'; '.join(reasons) or 'none'})")
    if len(studies) > 1:
        raise DicomError(
            f"{name}: holds {len(studies)} studies ({', '.join(sorted(studies))}); pass study_uid"
        )
    (uid,) = studies
    candidates: dict[str, list[tuple[str, list[tuple[Path, Dataset]]]]] = {}
    unmatched: list[tuple[str, str]] = []
    for series_uid, items in sorted(scan.series.items()):
        if str(items[0][1].StudyInstanceUID) != uid:
            continue
        with malformed_header(f"{name}: series ({series_uid})"):
            modality = rules.classify(items[0][1])
            desc = str(items[0][1].get("SeriesDescription") or "")
        if modality is None:
            unmatched.append((series_uid, desc))
        else:
            candidates.setdefault(modality, []).append((series_uid, items))
    chosen: dict[str, DicomSeries] = {}
    choices: dict[str, SeriesChoice] = {}
    for modality in MODALITIES:
        if modality not in candidates:
            continue
        with malformed_header(f"{name}: {modality} series"):
            ranked = sorted(candidates[modality], key=lambda c: (_rank(c[1]), c[0]), reverse=True)
        choice = SeriesChoice(modality, "", [u for u, _ in ranked])
        errors: list[DicomError] = []
        for series_uid, _items in ranked:
            try:
                series = scan.build(series_uid)
                series.check_size(max_voxels)
            except DicomError as exc:
                choice.refused[series_uid] = str(exc)
                errors.append(exc)
                continue
            chosen[modality], choice.chosen = series, series_uid
            break
        if not choice.chosen:
            if modality in modalities:
                if len(errors) == 1:
                    raise errors[0]
                raise DicomError(
                    f"{modality}: none of {len(errors)} matching series is usable: "
                    + " | ".join(str(e) for e in errors)
                )
            continue
        if len(ranked) > 1:
            log.info(
                "%s: %d series match; chose %s (ORIGINAL, most slices, latest number)",
                modality,
                len(ranked),
                chosen[modality].label,
            )
        choices[modality] = choice
    missing = [m for m in modalities if m not in chosen]
    if missing:
        found = ", ".join(f"'{d}'" for _, d in unmatched if d) or "none"
        raise DicomError(
            f"{name}: no series for modality {', '.join(missing)} in study {uid} "
            f"(unmatched series descriptions: {found}; {len(scan.skipped)} file(s) skipped); "
            "adjust the modality rules if a series is misnamed"
        )
    return DicomStudy(
        study_uid=uid,
        series=chosen,
        unmatched=unmatched,
        choices=choices,
        skipped=scan.skipped,
        max_voxels=max_voxels,
    )
