"""What ``transmed view PATH`` shows: the cases PATH holds, found from names and headers only.

PATH may be

- the storage folder of ``transmed serve`` (``jobs/`` and ``outbox/``): every job whose study
  images are still on disk (``jobs/<id>/input/``) with its SEG (in ``outbox/`` or the job's
  ``output/``); the node keeps both for ``review_retention_s`` after processing, so older
  jobs are listed with that reason;
- a ``transmed predict`` output folder (``predict_summary.json``): every case predicted, the
  images found from the input recorded in the summary or ``--images``; with ``--images``, any
  folder of ``<case>.nii.gz`` predictions (a training run's ``predictions/``, a CV's ``oof/``);
- a case or dataset folder in any layout ``transmed predict`` reads, with the prediction beside
  each case's images (``<case>.nii.gz``, ``*pred*``; else the layout's label file);
- a folder of loose files ``<name>_t1ce.nii.gz``... and ``<name>.nii.gz`` (or ``_pred``/``_seg``).

Nothing here reads voxel data (only names and, through the layout readers, headers), so a
50-case folder is listed in seconds.
Every file must resolve (symlinks followed) inside one of the allowed roots; anything else is
dropped with a problem message, never served.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transmed.data.labels import CONVENTIONS, MODALITIES, LabelConvention

_NIFTI = re.compile(r"\.nii(\.gz)?$")
_MOD = {"t1": "t1", "t1n": "t1", "t1ce": "t1ce", "t1c": "t1ce", "t2": "t2", "t2w": "t2",
        "flair": "flair", "t2f": "flair"}  # fmt: skip
_LOOSE = re.compile(r"^(?P<stem>.+?)[_\-.](?P<mod>t1ce|t1c|t1n|t1|t2w|t2f|t2|flair)$", re.I)
_PRED_SUFFIX = re.compile(r"[_\-.](pred|prediction|seg|label|labels)$", re.I)
CORRECTED = "_corrected"
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.\-]")


class ViewerError(ValueError):
    """PATH or a case cannot be viewed; the message names the file and the problem."""


@dataclass
class ViewCase:
    """One case's files (no voxel data). ``case_id`` is the URL key."""

    case_id: str
    images: dict[str, Path] = field(default_factory=dict)  # modality -> NIfTI file
    channels: dict[str, int] = field(default_factory=dict)  # MSD 4D files: modality -> channel
    prediction: Path | None = None  # NIfTI label map in ``convention``'s values
    convention: str | LabelConvention = "auto"  # a name in CONVENTIONS, or dataset.json's
    dicom_folder: Path | None = None  # DICOM study images
    seg: Path | None = None  # the predicted DICOM SEG
    job_id: str | None = None  # transmed serve job
    provenance: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why it cannot be opened (shown in the list)

    @property
    def kind(self) -> str:
        return "dicom" if self.dicom_folder is not None else "nifti"

    def label_convention(self, values: set[int] | None = None) -> LabelConvention:
        """The case's convention; ``auto`` picks BraTS 2021 when ``values`` hold a 4, else
        BraTS 2023 (1 NCR, 2 ED, 3 ET)."""
        if isinstance(self.convention, LabelConvention):
            return self.convention
        if self.convention == "auto":
            return CONVENTIONS["brats2021" if 4 in (values or set()) else "brats2023"]
        if self.convention not in CONVENTIONS:
            raise ViewerError(f"unknown label convention {self.convention!r}")
        return CONVENTIONS[self.convention]

    def inputs(self) -> set[Path]:
        """Every file this case was read from (never written over)."""
        out = {p.resolve() for p in self.images.values()}
        out |= {p.resolve() for p in (self.prediction, self.seg) if p is not None}
        return out


@dataclass
class Catalogue:
    """The cases of PATH, where writing is allowed (``root``) and what may be read."""

    root: Path
    kind: str  # storage | predict | dataset | loose
    cases: list[ViewCase]
    read_roots: tuple[Path, ...]
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def get(self, case_id: str) -> ViewCase:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)


def inside(path: Path, roots: tuple[Path, ...]) -> bool:
    """``path``, symlinks resolved, lies in one of ``roots`` (themselves resolved)."""
    real = path.resolve()
    return any(real == r or real.is_relative_to(r) for r in roots)


def safe_id(text: str) -> str:
    return _SAFE_ID.sub("_", text)[:120] or "case"


def _json(path: Path, limit: int = 1 << 20) -> dict[str, Any]:
    if not path.is_file() or path.stat().st_size > limit:
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def provenance_of(label_path: Path) -> dict[str, Any]:
    """The provenance JSON written beside a prediction, when there is one.

    ``<stem>.provenance.json`` (``transmed predict``'s, ``inference/provenance.py``), else
    ``<stem>_provenance.json`` or ``<stem>.json`` (``<stem>``: the name less ``.nii(.gz)``/
    ``.dcm``).
    """
    stem = _NIFTI.sub("", label_path.name).removesuffix(".dcm")
    for name in (f"{stem}.provenance.json", f"{stem}_provenance.json", f"{stem}.json"):
        data = _json(label_path.parent / name)
        if data:
            return {"file": name, **data}
    return {}


def corrected_path(prediction: Path) -> Path:
    """``X.nii.gz`` → ``X_corrected.nii.gz`` (``X.dcm`` → ``X_corrected.nii.gz``)."""
    stem = _NIFTI.sub("", prediction.name).removesuffix(".dcm")
    return prediction.parent / f"{stem}{CORRECTED}.nii.gz"


def record_path_of(corrected: Path) -> Path:
    """``X_corrected.nii.gz`` → ``X_corrected.json``: the edit record of a saved correction."""
    return corrected.parent / corrected.name.replace(".nii.gz", ".json")


def correction_paths(case: ViewCase, root: Path) -> tuple[Path, Path | None]:
    """(corrected label map, corrected SEG or None) of ``case`` in the viewed folder ``root``:
    where a save writes them and where opening the case looks for the latest correction."""
    if case.job_id is not None:  # transmed serve storage: beside the job's state file
        base = root / "jobs" / case.job_id / "review" / f"{case.case_id}.dcm"
    elif case.prediction is not None:
        base = case.prediction
    elif case.seg is not None:
        base = case.seg
    elif case.images:
        ref = case.images.get("t1ce") or next(iter(case.images.values()))
        base = ref.parent / f"{case.case_id}.nii.gz"
    else:
        raise ViewerError(f"case {case.case_id}: no file to save a correction beside")
    nifti = corrected_path(base)
    seg = nifti.parent / nifti.name.replace(".nii.gz", ".dcm") if case.kind == "dicom" else None
    return nifti, seg


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _NIFTI.search(p.name))


def _guess_convention(layout: str) -> str:
    """``auto``: decided from the label values when the case is opened (see ``volumes``)."""
    return layout if layout in ("brats2021", "brats2023", "msd", "nnunet") else "auto"


def _prediction_beside(folder: Path, case_id: str, used: set[Path]) -> Path | None:
    """``<case_id>.nii.gz``, then any ``*pred*`` NIfTI in ``folder`` not already used."""
    for name in (f"{case_id}.nii.gz", f"{case_id}.nii"):
        if (folder / name).is_file() and (folder / name).resolve() not in used:
            return folder / name
    for path in _nifti_files(folder):
        fresh = CORRECTED not in path.name and path.resolve() not in used
        if "pred" in path.name.lower() and fresh:
            return path
    return None


def _from_dataset(
    root: Path, layout: str, *, predictions: bool = True
) -> tuple[list[ViewCase], str]:
    """Cases of a case or dataset folder; with ``predictions``, each one's prediction beside
    its images (else the layout's label file)."""
    from transmed.inference.inputs import resolve_inputs

    inputs = resolve_inputs(root, layout=layout)
    if inputs.kind != "nifti":
        raise ViewerError(f"{root}: DICOM folders are viewed through their predict output folder")
    labelled: dict[str, Path | None] | None = None
    cases = []
    for c in inputs.cases:
        pred = None
        if predictions:
            folder = Path(next(iter(c.images.values()))).parent
            pred = _prediction_beside(folder, c.case_id, {p.resolve() for p in c.images.values()})
            if pred is None:  # no prediction: the layout's own label file, if any
                if labelled is None:
                    from transmed.data.layouts import index_dataset

                    index = index_dataset(root, inputs.layout)
                    labelled = {x.case_id: x.label for x in index.cases}
                pred = labelled.get(c.case_id)
        conv = c.convention or c.layout  # Case.__post_init__ sets it
        case = ViewCase(safe_id(c.case_id), dict(c.images), dict(c.channels), pred, conv)
        case.provenance = provenance_of(pred) if pred is not None else {}
        cases.append(case)
    return cases, inputs.layout


def _loose(root: Path, layout: str) -> list[ViewCase]:
    groups: dict[str, dict[str, Path]] = {}
    for path in _nifti_files(root):
        m = _LOOSE.match(_NIFTI.sub("", path.name))
        if m:
            groups.setdefault(m["stem"], {})[_MOD[m["mod"].lower()]] = path
    cases = []
    for stem, images in sorted(groups.items()):
        used = {p.resolve() for p in images.values()}
        pred = _prediction_beside(root, stem, used)
        if pred is None:
            for path in _nifti_files(root):
                base = _NIFTI.sub("", path.name)
                if _PRED_SUFFIX.sub("", base) == stem and base != stem and CORRECTED not in base:
                    pred = path
                    break
        ordered = {m: images[m] for m in MODALITIES if m in images}
        case = ViewCase(safe_id(stem), ordered, prediction=pred,
                        convention=_guess_convention(layout))  # fmt: skip
        case.provenance = provenance_of(pred) if pred is not None else {}
        cases.append(case)
    return cases


def _from_predict(root: Path, summary: dict[str, Any], images: Path | None) -> list[ViewCase]:
    source = images or (Path(summary["input"]) if isinstance(summary.get("input"), str) else None)
    model = {k: summary[k] for k in ("model", "device", "precision", "mode") if k in summary}
    cases: list[ViewCase] = []
    if "studies" in summary:  # DICOM predict: one SEG per study
        for res in summary.get("results", []):
            seg = root / Path(str(res.get("seg", ""))).name
            case = ViewCase(safe_id(str(res.get("study", seg.stem))), seg=seg,
                            dicom_folder=source, convention="internal")  # fmt: skip
            case.provenance = {"model": model, **provenance_of(seg)}
            if source is None:
                case.problem = "the study images are unknown: pass --images DICOM_FOLDER"
            cases.append(case)
        return cases
    by_id: dict[str, ViewCase] = {}
    if source is not None:
        try:
            found, _ = _from_dataset(source, str(summary.get("layout", "auto")), predictions=False)
        except ValueError as exc:
            raise ViewerError(f"{source}: the images of {root} cannot be read ({exc})") from None
        by_id = {c.case_id: c for c in found}
    for res in summary.get("results", []):
        if not res.get("ok") or not res.get("outputs"):
            continue
        pred = root / Path(str(res["outputs"][0])).name
        cid = safe_id(str(res["case_id"]))
        case = by_id.get(cid) or ViewCase(cid, problem="images not found: pass --images FOLDER")
        case.prediction = pred
        if "layout" in summary:
            case.convention = _guess_convention(str(summary["layout"]))
        case.provenance = {"model": model, **provenance_of(pred)}
        cases.append(case)
    return cases


def _from_storage(root: Path) -> list[ViewCase]:
    cases = []
    for folder in sorted((root / "jobs").iterdir()):
        state = _json(folder / "state.json")
        if not state:
            continue
        case = ViewCase(safe_id(folder.name), job_id=folder.name, convention="internal")
        case.provenance = {"job": {k: state.get(k) for k in ("state", "timings", "instances")}}
        uid = state.get("seg_sop_instance_uid")
        segs = [root / "outbox" / f"{uid}.dcm"] if uid else []
        segs += sorted((folder / "output").glob("*.dcm")) if (folder / "output").is_dir() else []
        case.seg = next((s for s in segs if s.is_file()), None)
        if (folder / "input").is_dir():
            case.dicom_folder = folder / "input"
        else:
            case.problem = "images deleted by the node (past its review_retention_s)"
        if case.seg is None and case.problem is None:
            case.problem = f"no SEG on disk (job {state.get('state', '?')})"
        cases.append(case)
    return cases


def _check_roots(cases: list[ViewCase], roots: tuple[Path, ...], problems: list[str]) -> None:
    """Drop every file that resolves outside the allowed roots (a symlink out of PATH)."""
    for case in cases:
        bad = [p for p in (*case.images.values(), case.prediction, case.seg, case.dicom_folder)
               if p is not None and not inside(p, roots)]  # fmt: skip
        if bad:
            case.images, case.prediction, case.seg, case.dicom_folder = {}, None, None, None
            case.problem = "a file lies outside the viewed folder (symlink?); refused"
            problems.append(f"{case.case_id}: {bad[0].name} resolves outside PATH; refused")


def catalogue(
    path: str | Path, *, images: str | Path | None = None, layout: str = "auto"
) -> Catalogue:
    """List the cases of ``path`` (see the module docstring); ``images``: where the images of a
    predict output folder are, when its summary does not say; ``layout``: label convention
    (``auto``: from the layout, else BraTS 2021).

    Raises:
        ViewerError: ``path`` missing, or holding nothing viewable.
    """
    root = Path(path)
    if not root.is_dir():
        raise ViewerError(f"{root}: not a folder (give a case folder, a predict output folder, "
                          "a folder of loose files or the storage folder of transmed serve)")
    root = root.resolve()
    image_root = Path(images).resolve() if images is not None else None
    summary = _json(root / "predict_summary.json")
    if not summary and image_root is not None:  # a folder of <case>.nii.gz (training, cv, ...)
        names = [p.name for p in _nifti_files(root) if CORRECTED not in p.name]
        results = [{"case_id": _NIFTI.sub("", n), "ok": True, "outputs": [n]} for n in names]
        summary = {"results": results, "input": str(image_root)}
    if (root / "jobs").is_dir() and (root / "outbox").is_dir():
        kind, cases = "storage", _from_storage(root)
    elif summary:
        kind, cases = "predict", _from_predict(root, summary, image_root)
        if image_root is None and isinstance(summary.get("input"), str):
            image_root = Path(summary["input"]).resolve()
    else:
        try:
            kind, (cases, _) = "dataset", _from_dataset(root, layout)
        except ValueError:
            kind, cases = "loose", _loose(root, layout)
    if not cases:
        raise ViewerError(f"{root}: no case to view (no images with a prediction found)")
    roots = (root,) + ((image_root,) if image_root is not None else ())
    problems: list[str] = []
    _check_roots(cases, roots, problems)
    if layout != "auto":
        for case in cases:
            case.convention = layout
    return Catalogue(root, kind, cases, roots, problems, summary)
