"""Evaluate a folder of predicted label maps against reference label maps (``transmed evaluate``).

Matching (by case id):

- references: if the ``ref`` folder holds any ``*seg.nii.gz`` / ``*seg.nii`` file at any depth
  (a BraTS 2021/2023 dataset folder with ``{case}/{case}_seg.nii.gz`` or ``{case}-seg.nii.gz``),
  those are the references and the case id is the name minus ``_seg``/``-seg`` and the ending;
  otherwise the references are the NIfTI files directly in ``ref`` (or in ``ref/labelsTr`` for
  an MSD / nnU-Net dataset folder) and the case id is the name minus ``.nii.gz``/``.nii``;
- predictions: the NIfTI files directly in ``pred``, case id = name minus the ending (a trailing
  ``_seg``/``-seg`` is also accepted);
- a prediction without a reference is listed as unmatched; hidden files (``.*``) are ignored.

Evaluation does not flatter: a case whose prediction is missing or fails (not on the reference's
grid, i.e. same shape and affines equal within :data:`GRID_ATOL_MM` mm; unreadable; unknown
label values) counts in the means as the worst case, as the BraTS challenge counts it
(:func:`worst_case_metrics`: Dice 0, HD95 373.13 mm, sensitivity and specificity 0, lesion-wise
Dice 0 and HD95 374 mm), flagged ``worst_case`` (and ``pred_missing``) in the CSV with its
``error``, listed in the summary and counted in ``n_worst_case``, never dropped. Only a case
whose *reference* cannot be read is left out of the means (there is nothing to score against);
it is listed under ``"failed"`` and counted in ``n_excluded``.

Outputs (see :func:`output_paths`): a per-case CSV, one row per case × region, and a JSON
summary (mean, sd, median, n per region and metric; the case lists), both written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import re
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from transmed.data.labels import REGIONS, LabelConvention, get_convention, to_internal
from transmed.data.validation import GRID_ATOL_MM  # pred/ref affines may differ this much (mm)
from transmed.evaluation.lesionwise import LESION_MISS_HD95_MM
from transmed.evaluation.metrics import HD95_ONE_EMPTY_MM, METRICS, region_metrics
from transmed.io.atomic import atomic_write_text
from transmed.io.nifti import DEFAULT_MAX_VOXELS, check_nifti_header, load_volume

#: Names accepted by ``labels``/``pred_labels`` besides "auto".
LABEL_CHOICES: tuple[str, ...] = ("brats2021", "brats2023", "msd", "nnunet", "internal")
#: Lesion-wise columns (BraTS 2023), present when lesion-wise scores are computed.
LESION_METRICS: tuple[str, ...] = ("lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fn",
                                   "lesion_fp")
VOLUME_COLUMNS: tuple[str, ...] = ("ref_volume_mm3", "pred_volume_mm3")

_NIFTI = re.compile(r"^(?P<stem>.+?)(?P<ending>\.nii\.gz|\.nii)$")
_SEG = re.compile(r"^(?P<case>.*?)[_-]?seg(?P<ending>\.nii\.gz|\.nii)$")


@dataclass(frozen=True)
class CasePair:
    """One reference label file and its prediction (None when missing)."""

    case_id: str
    ref: Path
    pred: Path | None


@dataclass
class CasePairs:
    """The result of matching two folders."""

    pairs: list[CasePair]
    unmatched_predictions: list[Path] = field(default_factory=list)
    seg_suffixes: set[str] = field(default_factory=set)  # "_seg"/"-seg" seen on references

    @property
    def missing_predictions(self) -> list[str]:
        return [p.case_id for p in self.pairs if p.pred is None]


def _visible_niftis(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _NIFTI.match(p.name)
    )


def _by_id(items: Iterable[tuple[str, Path]], what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for case_id, path in items:
        if case_id in found:
            raise ValueError(
                f"{what}: case id {case_id!r} appears twice ({found[case_id]} and {path})"
            )
        found[case_id] = path
    return found


def find_references(ref_dir: str | Path) -> tuple[dict[str, Path], set[str]]:
    """Reference label files by case id (rules in the module doc) and the seg suffixes seen.

    Raises:
        ValueError: missing folder, no reference found, or a case id found twice.
    """
    root = Path(ref_dir)
    if not root.is_dir():
        raise ValueError(f"--ref {root}: not a folder")
    segs = sorted(
        p for p in root.rglob("*seg.nii*")
        if p.is_file() and _SEG.match(p.name)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if segs:
        items, suffixes = [], set()
        for p in segs:
            m = _SEG.match(p.name)
            if m is None:  # filtered above; keeps type checkers content
                continue
            case_id = m["case"] or p.parent.name  # a bare "seg.nii.gz" is named by its folder
            suffix = p.name[len(m["case"]):-len(m["ending"])]  # "_seg", "-seg" or "seg"
            suffixes.add(suffix)
            items.append((case_id, p))
        return _by_id(items, f"--ref {root}"), suffixes
    folder = root / "labelsTr" if (root / "labelsTr").is_dir() else root
    files = _visible_niftis(folder)
    if not files:
        raise ValueError(
            f"--ref {root}: no reference label files found (looked for *seg.nii.gz at any depth, "
            f"then *.nii.gz / *.nii in {folder})"
        )
    return _by_id(((_NIFTI.match(p.name)["stem"], p) for p in files), f"--ref {root}"), set()


def pair_cases(pred_dir: str | Path, ref_dir: str | Path) -> CasePairs:
    """Match prediction files to reference files by case id (rules in the module doc)."""
    pred_root = Path(pred_dir)
    if not pred_root.is_dir():
        raise ValueError(f"--pred {pred_root}: not a folder")
    refs, suffixes = find_references(ref_dir)
    preds = _by_id(((_NIFTI.match(p.name)["stem"], p) for p in _visible_niftis(pred_root)),
                   f"--pred {pred_root}")
    used: set[str] = set()
    pairs = []
    for case_id, ref in sorted(refs.items()):
        key = next((k for k in (case_id, f"{case_id}_seg", f"{case_id}-seg")
                    if k in preds and k not in used), None)
        if key is not None:
            used.add(key)
        pairs.append(CasePair(case_id, ref, preds[key] if key else None))
    unmatched = [p for k, p in sorted(preds.items()) if k not in used]
    return CasePairs(pairs, unmatched, suffixes)


#: References read at most to look for BraTS 2021's label 4 (nearly every glioma has ET).
_LABEL_PROBES = 20


def _has_label_4(references: Iterable[Path], root: Path) -> bool:
    """True when a reference holds the value 4 (BraTS 2021's ET) and none read before it 3.

    Raises:
        ValueError: a reference with 3 and one with 4 (no convention has both: ask).
    """
    seen_3: Path | None = None
    for path in itertools.islice(references, _LABEL_PROBES):
        try:
            values = set(np.unique(load_volume(path, dtype=np.int32).data).tolist())
        except ValueError:
            continue  # an unreadable reference fails later, as its own case
        if 4 in values:
            if 3 in values or seen_3 is not None:
                raise ValueError(
                    f"--ref {root}: references hold both 3 ({seen_3 or path}) and 4 ({path}); "
                    f"no label convention has both: pass --labels {'|'.join(LABEL_CHOICES)}"
                )
            return True
        if 3 in values:
            seen_3 = seen_3 or path
    return False


def resolve_convention(
    labels: str, ref_dir: str | Path, seg_suffixes: set[str],
    references: Iterable[Path] | None = None,
) -> LabelConvention:  # fmt: skip
    """The reference label convention for ``labels`` (a name from :data:`LABEL_CHOICES` or
    ``"auto"``).

    ``auto``: a ``dataset.json`` in ``ref_dir`` (or its parent, for a ``labelsTr`` folder) with
    ``"labels"`` decides (MSD / nnU-Net); else reference names ``*_seg`` mean BraTS 2021 (ET = 4)
    and ``*-seg`` BraTS 2023 (ET = 3); else a reference holding the value 4 (only BraTS 2021
    uses it; the first 20 ``references`` are read until one has it) means BraTS 2021. Other
    plain ``{case}.nii.gz`` files are refused: BraTS 2023 and MSD both use the values 1-3 with
    different meanings.
    """
    if labels != "auto":
        if labels not in LABEL_CHOICES:
            raise ValueError(
                f"--labels {labels!r}: expected 'auto' or one of {list(LABEL_CHOICES)}"
            )
        return get_convention(labels)
    from transmed.data.dataset_json import convention_from_labels, read_dataset_json

    root = Path(ref_dir)
    for candidate in (root / "dataset.json", root.parent / "dataset.json"):
        if candidate.is_file():
            meta = read_dataset_json(candidate)
            if "labels" in meta:
                keys_are_values = all(str(k).isdigit() for k in meta["labels"])
                name = "nnunet" if "channel_names" in meta else "msd"
                return convention_from_labels(meta["labels"], name=name, source=candidate,
                                              names_are_keys=not keys_are_values)
    if seg_suffixes == {"_seg"}:
        return get_convention("brats2021")
    if seg_suffixes == {"-seg"}:
        return get_convention("brats2023")
    if _has_label_4(references or [], root):
        return get_convention("brats2021")
    raise ValueError(
        f"--ref {root}: cannot tell the label convention (no dataset.json with 'labels', "
        f"reference names not uniformly *_seg or *-seg); pass --labels "
        f"{'|'.join(LABEL_CHOICES)}"
    )


@dataclass
class CaseResult:
    """Metrics of one case (``{region: {metric: value}}``), and the error that stopped it.

    A missing or failed prediction has ``worst_case`` set and :func:`worst_case_metrics` as its
    metrics (with the ``error``); a case whose reference is unusable has no metrics at all.
    """

    case_id: str
    pred_missing: bool
    metrics: dict[str, dict[str, float]] | None = None
    error: str | None = None
    spacing: tuple[float, float, float] | None = None
    worst_case: bool = False


def worst_case_metrics(lesionwise: bool = True) -> dict[str, dict[str, float]]:
    """What a missing or failed prediction scores in every region (the BraTS challenge's
    worst case): Dice 0, HD95 373.13 mm, sensitivity 0, specificity 0, and lesion-wise Dice 0,
    HD95 374 mm; volumes and lesion counts are left out (blank in the CSV)."""
    values = {"dice": 0.0, "hd95": HD95_ONE_EMPTY_MM, "sensitivity": 0.0, "specificity": 0.0}
    if lesionwise:
        values.update(lesion_dice=0.0, lesion_hd95=LESION_MISS_HD95_MM)
    return {region: dict(values) for region in REGIONS}


def _grid_error(pair: CasePair, max_voxels: int) -> str | None:
    ref_img = check_nifti_header(pair.ref, max_voxels=max_voxels)
    if pair.pred is None:
        return None
    pred_img = check_nifti_header(pair.pred, max_voxels=max_voxels)
    ref_shape, pred_shape = ref_img.shape[:3], pred_img.shape[:3]
    if ref_shape != pred_shape:
        return (f"prediction {pair.pred} has shape {pred_shape} but reference {pair.ref} has "
                f"{ref_shape}: resample the prediction to the reference grid")
    diff = float(np.max(np.abs(np.asarray(pred_img.affine) - np.asarray(ref_img.affine))))
    if diff > GRID_ATOL_MM:
        return (f"prediction {pair.pred} affine differs from reference {pair.ref} affine by up "
                f"to {diff:.4g} mm (tolerance {GRID_ATOL_MM} mm): not the same voxel grid")
    return None


def evaluate_case(
    pair: CasePair,
    ref_convention: LabelConvention,
    pred_convention: LabelConvention,
    *,
    lesionwise: bool = True,
    challenge: str = "BraTS-GLI",
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> CaseResult:
    """Read one case, convert both maps to internal labels, compute :func:`region_metrics`.

    Spacing (mm) comes from the reference's affine. ValueErrors (headers, grids, label values)
    are returned in :attr:`CaseResult.error` rather than raised, so one bad case does not stop a
    folder: a missing or failing prediction gets :func:`worst_case_metrics`; an unusable
    reference gets no metrics.
    """
    missing = pair.pred is None
    try:
        check_nifti_header(pair.ref, max_voxels=max_voxels)
        ref = load_volume(pair.ref, max_voxels=max_voxels, dtype=np.int32)
        ref_labels = to_internal(ref.data, ref_convention, source=pair.ref)
    except ValueError as exc:  # nothing to score against: left out of the means, listed
        return CaseResult(pair.case_id, missing, error=f"reference unusable: {exc}")
    worst = worst_case_metrics(lesionwise)
    if pair.pred is None:
        return CaseResult(pair.case_id, True, metrics=worst, spacing=ref.spacing,
                          error=f"no prediction for reference {pair.ref}", worst_case=True)
    try:
        problem = _grid_error(pair, max_voxels)
        if problem:
            raise ValueError(problem)
        pred = load_volume(pair.pred, max_voxels=max_voxels, dtype=np.int32)
        pred_labels = to_internal(pred.data, pred_convention, source=pair.pred)
        metrics = region_metrics(pred_labels, ref_labels, ref.spacing, lesionwise=lesionwise,
                                 challenge=challenge)
    except ValueError as exc:
        return CaseResult(pair.case_id, missing, metrics=worst, error=str(exc),
                          spacing=ref.spacing, worst_case=True)
    return CaseResult(pair.case_id, missing, metrics=metrics, spacing=ref.spacing)


def _evaluate_job(args: tuple[CasePair, LabelConvention, LabelConvention, bool, str, int]
                  ) -> CaseResult:
    pair, ref_conv, pred_conv, lesionwise, challenge, max_voxels = args
    return evaluate_case(pair, ref_conv, pred_conv, lesionwise=lesionwise, challenge=challenge,
                         max_voxels=max_voxels)


@dataclass
class EvaluationReport:
    """Every case's result plus what was matched and how."""

    results: list[CaseResult]
    pairs: CasePairs
    ref_labels: str
    pred_labels: str
    lesionwise: bool
    challenge: str
    pred_dir: Path
    ref_dir: Path

    @property
    def columns(self) -> tuple[str, ...]:
        """CSV columns: identification, :data:`METRICS`, volumes, lesion-wise, error."""
        lesion = LESION_METRICS if self.lesionwise else ()
        return ("case", "region", "pred_missing", "worst_case", *METRICS, *VOLUME_COLUMNS,
                *lesion, "error")

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (*METRICS, *(LESION_METRICS[:2] if self.lesionwise else ()))

    @property
    def failed(self) -> dict[str, str]:
        """Cases whose prediction or reference could not be used (not the missing ones)."""
        return {r.case_id: r.error for r in self.results
                if r.error is not None and not (r.pred_missing and r.worst_case)}  # fmt: skip

    @property
    def worst_case(self) -> dict[str, str]:
        """Cases scored as the worst case (missing or failed prediction) and why."""
        return {r.case_id: r.error or "" for r in self.results if r.worst_case}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per case × region, in case then :data:`REGIONS` order."""
        rows = []
        for res in self.results:
            for region in REGIONS:
                row: dict[str, Any] = {c: "" for c in self.columns}
                row.update(case=res.case_id, region=region, pred_missing=int(res.pred_missing),
                           worst_case=int(res.worst_case), error=res.error or "")  # fmt: skip
                if res.metrics is not None:
                    row.update({k: v for k, v in res.metrics[region].items() if k in row})
                rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: per region and metric ``{mean, sd, median, n}`` over every case
        with a usable reference (worst-case scores included), and the case lists."""
        from transmed.evaluation.statistics import summarise  # scipy.stats: slow to import

        ok = [r for r in self.results if r.metrics is not None]  # worst cases included
        metrics = {
            region: {
                name: summarise([r.metrics[region][name] for r in ok]).as_dict()  # type: ignore[index]
                for name in self.metric_names
            }
            for region in REGIONS
        }
        return {
            "pred_dir": str(self.pred_dir),
            "ref_dir": str(self.ref_dir),
            "ref_labels": self.ref_labels,
            "pred_labels": self.pred_labels,
            "lesionwise": self.lesionwise,
            "challenge": self.challenge if self.lesionwise else None,
            "n_references": len(self.results),
            "n_evaluated": sum(not r.worst_case for r in ok),
            "n_worst_case": sum(r.worst_case for r in ok),
            "n_excluded": len(self.results) - len(ok),
            "n_in_means": len(ok),
            "metrics": metrics,
            "cases": [r.case_id for r in ok],
            "worst_case": self.worst_case,
            "missing_predictions": self.pairs.missing_predictions,
            "unmatched_predictions": [str(p) for p in self.pairs.unmatched_predictions],
            "failed": self.failed,
            "conventions": {
                "both_empty": "Dice 1, HD95 0 mm",
                "one_empty": "Dice 0, HD95 373.13 mm (BraTS volume diagonal)",
                "missing_or_failed_prediction": (
                    "worst case in the means: Dice 0, HD95 373.13 mm, sensitivity 0, "
                    "specificity 0, lesion-wise Dice 0 and HD95 374 mm"
                ),
                "unusable_reference": "left out of the means, listed under failed",
                "hd95": "MONAI definition: max of the two directed 95th percentiles, mm",
            },
        }


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    *,
    labels: str = "auto",
    pred_labels: str = "same",
    lesionwise: bool = True,
    challenge: str = "BraTS-GLI",
    workers: int = 1,
    progress: bool = True,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    case_ids: set[str] | None = None,
) -> EvaluationReport:
    """Evaluate every reference case of ``ref_dir`` against ``pred_dir``.

    Args:
        labels: reference label convention, a name from :data:`LABEL_CHOICES` or ``"auto"``
            (see :func:`resolve_convention`).
        pred_labels: prediction convention; ``"same"`` = the reference's.
        lesionwise: add the BraTS 2023 lesion-wise scores.
        challenge: lesion-wise parameter set, a key of
            :data:`transmed.evaluation.lesionwise.CHALLENGE_PARAMETERS`.
        workers: processes; 1 computes in this process.
        progress: tqdm bar on stderr (hidden when stderr is not a terminal).
        case_ids: evaluate only these reference cases (e.g. a run's validation cases in a
            dataset folder that holds all cases); ``None`` = every reference case.

    Raises:
        ValueError: for folder-level problems (missing folders, no references, duplicate case
            ids, unknown convention). Per-case problems are in the report instead.
    """
    if workers < 1:
        raise ValueError(f"--workers: expected ≥ 1, got {workers}")
    if lesionwise:
        from transmed.evaluation.lesionwise import challenge_parameters

        challenge_parameters(challenge)  # refuse an unknown name before any work
    pairs = pair_cases(pred_dir, ref_dir)
    if case_ids is not None:
        unknown = sorted(set(case_ids) - {p.case_id for p in pairs.pairs})
        if unknown:
            raise ValueError(f"{ref_dir}: no reference for case(s) {unknown[:5]}")
        pairs = dataclasses.replace(pairs, pairs=[p for p in pairs.pairs if p.case_id in case_ids])
    ref_conv = resolve_convention(labels, ref_dir, pairs.seg_suffixes,
                                  (p.ref for p in pairs.pairs))  # fmt: skip
    if pred_labels == "same":
        pred_conv = ref_conv
    elif pred_labels in LABEL_CHOICES:
        pred_conv = get_convention(pred_labels)
    else:
        raise ValueError(
            f"--pred-labels {pred_labels!r}: expected 'same' or one of {list(LABEL_CHOICES)}"
        )
    from transmed.progress import progress_bar

    jobs = [(p, ref_conv, pred_conv, lesionwise, challenge, max_voxels) for p in pairs.pairs]
    results: list[CaseResult] = []
    with progress_bar(total=len(jobs), desc="evaluating", unit="case",
              disable=None if progress else True) as bar:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                results.append(_evaluate_job(job))
                bar.update()
        else:
            # spawn: workers must not inherit the parent's threads (torch, tqdm) via fork.
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                     mp_context=get_context("spawn")) as pool:
                for future in as_completed(pool.submit(_evaluate_job, job) for job in jobs):
                    results.append(future.result())
                    bar.update()
    order = {p.case_id: i for i, p in enumerate(pairs.pairs)}
    results.sort(key=lambda r: order[r.case_id])
    return EvaluationReport(
        results=results,
        pairs=pairs,
        ref_labels=ref_conv.name,
        pred_labels=pred_conv.name,
        lesionwise=lesionwise,
        challenge=challenge,
        pred_dir=Path(pred_dir),
        ref_dir=Path(ref_dir),
    )


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """``(csv_path, json_path)`` for ``--out``.

    An existing folder gets ``metrics.csv`` and ``metrics.json`` inside it; ``FILE.csv`` or
    ``FILE.json`` gives ``FILE.csv`` and ``FILE.json`` beside each other; any other ``FILE``
    gets the two endings appended (``results/eval`` -> ``results/eval.csv``, ``.json``).
    """
    out = Path(out)
    if out.is_dir():
        return out / "metrics.csv", out / "metrics.json"
    stem = out.with_suffix("") if out.suffix.lower() in (".csv", ".json") else out
    return stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: EvaluationReport, out: str | Path) -> tuple[Path, Path]:
    """Write the per-case CSV and the JSON summary (paths from :func:`output_paths`)."""
    csv_path, json_path = output_paths(out)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(report.columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.rows())
    atomic_write_text(csv_path, buffer.getvalue())
    summary = _json_safe({**report.summary(), "csv": str(csv_path)})
    atomic_write_text(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path
