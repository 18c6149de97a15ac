"""Provenance: what produced an output, written as JSON beside it (and summarised in the SEG).

Every label map (NIfTI) and every DICOM SEG that ``transmed predict`` or the node writes gets
``<output stem>.provenance.json`` with the model (name, TransMed version, checkpoint SHA-256),
the series used per modality, brain extraction (on/off, method, volume), the registration
transforms and residuals, the inference mode, warnings and timings. Warnings include an input
far from what the model was trained on (:func:`profile_warnings`) and the input checks of
preprocessing (a CT, an empty volume, an implausible brain mask kept with ``--force``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transmed.io.atomic import atomic_write_text
from transmed.io.hashing import file_sha256  # noqa: F401  (re-exported for the predictor)

PROVENANCE_VERSION = 1
SUFFIX = ".provenance.json"
#: An input slice thicker than this many times the training data's thickest is warned about.
SPACING_FACTOR = 2.0


def provenance_path(output: str | Path) -> Path:
    """``out/case.nii.gz`` → ``out/case.provenance.json``; ``X.dcm`` → ``X.provenance.json``."""
    output = Path(output)
    name = output.name
    for ending in (".nii.gz", ".nii", ".dcm"):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    return output.with_name(name + SUFFIX)


def profile_warnings(
    input_profile: Mapping[str, Any], training: Mapping[str, Any] | None, extra: Mapping[str, Any]
) -> list[str]:
    """Warnings when an input is far from the model's training data (``ckpt["data_profile"]``,
    see :func:`transmed.transforms.preprocess.data_profile`). Nothing without a profile."""
    if not training:
        return []
    out = []
    stripped_in = bool(extra.get("skull_stripped_input")) or bool(
        (extra.get("brain_extraction") or {}).get("applied")
    )
    frac = training.get("skull_stripped_fraction")
    if frac is None and isinstance(training.get("skull_stripped"), bool):  # "both": no claim
        frac = 1.0 if training["skull_stripped"] else 0.0
    if frac is not None and float(frac) >= 0.99 and not stripped_in:
        out.append("the model was trained on skull-stripped data only; this input has the skull "
                   "on and no brain extraction was run (use --brain-extraction auto)")  # fmt: skip
    if frac is not None and float(frac) <= 0.01 and stripped_in:
        out.append("the model was trained on skull-on heads only; this input is skull-stripped")
    thick = training.get("max_slice_mm") or max(
        (training.get("generator") or {}).get("slice_mm") or [0.0])  # the generator's range
    slice_mm = input_profile.get("max_slice_mm")
    if thick and slice_mm and float(slice_mm) > SPACING_FACTOR * float(thick):
        out.append(f"slices of {float(slice_mm):.1f} mm; the model's training data had at most "
                   f"{float(thick):.1f} mm")  # fmt: skip
    lo_hi = training.get("foreground_ml")
    ml = input_profile.get("foreground_ml")
    if lo_hi and ml is not None and not 0.5 * float(lo_hi[0]) <= float(ml) <= 2 * float(lo_hi[1]):
        out.append(f"foreground of {float(ml):.0f} ml; the training data had "
                   f"{float(lo_hi[0]):.0f}-{float(lo_hi[1]):.0f} ml")  # fmt: skip
    return out


def build_provenance(
    *,
    case_id: str | None,
    outputs: Sequence[str | Path],
    models: Sequence[Mapping[str, Any]],
    preprocess: Mapping[str, Any],
    record_extra: Mapping[str, Any],
    inference: Mapping[str, Any],
    seconds: Mapping[str, float],
    training_profile: Mapping[str, Any] | None = None,
    series: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance document (JSON-able) of one output.

    Args:
        models: one entry per checkpoint (``name``, ``path``, ``sha256``).
        preprocess: the PreprocessConfig fields used.
        record_extra: ``PreprocessRecord.extra`` (brain mask, registration, warnings, ...).
        inference: mode (``whole``/``sliding``), window, precision, TTA, device.
        seconds: timings per stage.
        series: per modality, what identifies the input series (file or SeriesInstanceUID).
    """
    from transmed import __version__

    extra = dict(record_extra)
    warnings = list(extra.pop("warnings", []))
    profile = extra.get("input_profile") or {}
    warnings += [w for w in profile_warnings(profile, training_profile, extra) if w not in warnings]
    return {
        "provenance_version": PROVENANCE_VERSION,
        "software": {"name": "transmed", "version": __version__},
        "case_id": case_id,
        "outputs": [Path(o).name for o in outputs],
        "model": list(models),
        "series": dict(series) if series is not None else extra.pop("series", {}),
        "missing_series": extra.pop("missing", []),
        "preprocessing": dict(preprocess),
        "brain_extraction": extra.pop("brain_extraction", None),
        "coregistration": extra.pop("coregistration", None),
        "registration": extra.pop("registration", {}),
        "inference": dict(inference),
        "forced": bool(extra.pop("forced", False)),
        "warnings": warnings,
        "seconds": {**{k: round(float(v), 3) for k, v in seconds.items()},
                    **{f"preprocess_{k}": round(float(v), 3)
                       for k, v in (extra.get("seconds") or {}).items()}},  # fmt: skip
        "details": {k: v for k, v in extra.items() if k not in ("seconds", "series")},
    }


def write_provenance(document: Mapping[str, Any], output: str | Path) -> Path:
    """Write ``document`` atomically beside ``output``; returns the JSON's path."""
    path = provenance_path(output)
    atomic_write_text(path, json.dumps(document, indent=2, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def seg_summary(document: Mapping[str, Any]) -> str:
    """Compact JSON of the provenance's key facts, for the SEG's AlgorithmParameters (LT)."""
    bet = document.get("brain_extraction") or {}
    reg = document.get("registration") or {}
    short = {
        "model": [{"name": m.get("name"), "sha256": str(m.get("sha256", ""))[:16]}
                  for m in document.get("model", [])],  # fmt: skip
        "brain_extraction": bet.get("method") if bet.get("applied") else "off",
        "registration": {m: {"residual_mm": r.get("residual_mm"),
                             "translation_mm": r.get("translation_mm")} for m, r in reg.items()},
        "missing_series": document.get("missing_series", []),
        "inference": (document.get("inference") or {}).get("mode"),
        "forced": document.get("forced", False),
        "warnings": len(document.get("warnings", [])),
    }  # fmt: skip
    return json.dumps(short, separators=(",", ":"))[:10240]
