"""Cross-validation folds grouped by patient, and the checks a splits file must pass.

Two scans of one patient (BraTS 2023 ``BraTS-GLI-00001-000`` and ``-001`` are two time points
of patient ``BraTS-GLI-00001``) must never be split between training and validation: the model
would be validated on a brain it has trained on. So folds are made of patients, not cases.

Who is a patient (:func:`patient_groups`):

- by default, an id of the BraTS 2023 form ``BraTS-<TASK>-<patient>-<time point>`` belongs to
  ``BraTS-<TASK>-<patient>``; any other id is its own patient (BraTS 2021, MSD and most nnU-Net
  datasets hold one scan per patient);
- ``regex``: the patient id is the regex's first group (or its whole match) searched in the case
  id, e.g. ``^(sub-\\d+)_ses-`` for BIDS-like names; a case it does not match is refused;
- ``mapping``: a JSON object ``{case_id: patient_id}`` or a CSV/TSV file with a header and the
  columns case id, patient id; every case must be listed.

A user-supplied splits file (nnU-Net's ``splits_final.json`` form: a list of
``{"train": [...], "val": [...]}``) is checked by :func:`load_splits`: every case exists, train
and validation are disjoint in each fold, every case is validated exactly once, and no patient
has cases on both sides of a fold.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transmed.training.config import ConfigError

#: BraTS 2023 case ids: ``BraTS-GLI-00001-000`` -> patient ``BraTS-GLI-00001``.
BRATS2023_PATIENT = re.compile(r"^(BraTS-[A-Za-z]+-\d+)-\d+$")


def _few(items: Sequence[str] | set[str], n: int = 5) -> str:
    items = sorted(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _read_mapping(path: Path) -> dict[str, str]:
    """``{case_id: patient_id}`` from a JSON object or a two-column CSV/TSV with a header."""
    if not path.is_file():
        raise ConfigError(f"{path}: patient mapping file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the patient mapping ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
        ):
            raise ConfigError(f"{path}: expected a JSON object {{case_id: patient_id}}")
        return dict(data)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    mapping: dict[str, str] = {}
    for n, row in enumerate(rows[1:], start=2):  # row 1 is the header
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(f"{path}, line {n}: expected 'case_id{delimiter}patient_id'")
        case, patient = row[0].strip(), row[1].strip()
        if mapping.get(case, patient) != patient:
            raise ConfigError(f"{path}, line {n}: case {case} is given two patients")
        mapping[case] = patient
    return mapping


def patient_groups(
    case_ids: Sequence[str],
    *,
    regex: str | None = None,
    mapping: str | Path | None = None,
) -> dict[str, str]:
    """``{case_id: patient_id}`` for every case (rules in the module docstring).

    Raises:
        ConfigError: both ``regex`` and ``mapping`` given, an invalid regex, a case the regex
            does not match, an unreadable mapping file or one that leaves cases out (the message
            names the file and the cases).
    """
    if regex is not None and mapping is not None:
        raise ConfigError("give either a patient regex or a patient mapping file, not both")
    if mapping is not None:
        path = Path(mapping)
        table = _read_mapping(path)
        missing = [c for c in case_ids if c not in table]
        if missing:
            raise ConfigError(
                f"{path}: no patient for {len(missing)} case(s): {_few(missing)}; "
                "every case of the dataset must be listed"
            )
        return {c: table[c] for c in case_ids}
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"patient regex {regex!r}: invalid ({exc})") from None
        groups: dict[str, str] = {}
        unmatched = []
        for c in case_ids:
            m = pattern.search(c)
            patient = (m.group(1) if pattern.groups else m.group(0)) if m else None
            if not patient:
                unmatched.append(c)
            else:
                groups[c] = patient
        if unmatched:
            raise ConfigError(
                f"patient regex {regex!r} does not match (or captures nothing in) "
                f"{len(unmatched)} case(s): {_few(unmatched)}"
            )
        return groups
    return {
        c: m.group(1) if (m := BRATS2023_PATIENT.match(c)) else c for c in case_ids
    }


def make_folds(
    case_ids: Sequence[str],
    folds: int,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> list[dict[str, list[str]]]:
    """nnU-Net-style ``splits_final.json`` content: k folds of train/val ids, by patient.

    Patients (``groups``: case -> patient; :func:`patient_groups`' default rule when ``None``)
    are shuffled with ``seed``, then dealt, largest first, to the fold holding the fewest cases,
    so every case of a patient lands in the same validation fold and the folds stay balanced.
    With one case per patient this is a plain shuffled round robin.

    Raises:
        ValueError: fewer than 2 folds, or more folds than patients.
    """
    ids = sorted(case_ids)
    groups = dict(groups) if groups is not None else patient_groups(ids)
    members: dict[str, list[str]] = {}
    for c in ids:
        members.setdefault(groups[c], []).append(c)
    patients = sorted(members)
    if folds < 2 or folds > len(patients):
        raise ValueError(
            f"need 2 ≤ folds ≤ number of patients ({len(patients)} patients, {len(ids)} cases), "
            f"got {folds}"
        )
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    order.sort(key=lambda p: -len(members[p]))  # stable: the shuffle decides among equals
    chunks: list[list[str]] = [[] for _ in range(folds)]
    for patient in order:
        smallest = min(range(folds), key=lambda k: (len(chunks[k]), k))
        chunks[smallest].extend(members[patient])
    return [{"train": sorted(set(ids) - set(chunk)), "val": sorted(chunk)} for chunk in chunks]


def check_splits(
    splits: Any,
    case_ids: Sequence[str],
    groups: Mapping[str, str] | None = None,
    *,
    source: str = "splits",
) -> list[dict[str, list[str]]]:
    """Refuse splits that would give a wrong cross-validation; return them as lists of str.

    Raises:
        ConfigError: naming ``source``, the fold and the offending cases: not a list of
            ``{"train": [...], "val": [...]}``, unknown cases, a case in both train and val of a
            fold, a case validated in several folds or in none, a patient (``groups``) with
            cases on both sides of a fold.
    """
    if not isinstance(splits, list) or not splits or not all(
        isinstance(s, dict) and {"train", "val"} <= set(s)
        and all(isinstance(s[k], list) and all(isinstance(c, str) for c in s[k])
                for k in ("train", "val"))
        for s in splits
    ):  # fmt: skip
        raise ConfigError(
            f"{source}: expected a non-empty list of {{'train': [ids...], 'val': [ids...]}}"
        )
    known = set(case_ids)
    seen_in_val: Counter[str] = Counter()
    for k, s in enumerate(splits):
        train, val = set(s["train"]), set(s["val"])
        unknown = (train | val) - known
        if unknown:
            raise ConfigError(
                f"{source}: fold {k} names {len(unknown)} case(s) the data do not have: "
                f"{_few(unknown)}"
            )
        both = train & val
        if both:
            raise ConfigError(
                f"{source}: fold {k} has {len(both)} case(s) in both train and val: {_few(both)}"
            )
        if groups is not None:
            leaked = {groups[c] for c in val} & {groups[c] for c in train}
            if leaked:  # named by case: a patient id from a mapping file may be an identifier
                cases = {c for c in train | val if groups[c] in leaked}
                raise ConfigError(
                    f"{source}: fold {k} trains and validates on the same patient "
                    f"({len(leaked)} patient(s); cases {_few(cases)}); keep a patient's cases in "
                    "one fold, or set how cases map to patients (--patient-regex / --patient-map)"
                )
        seen_in_val.update(val)
    twice = {c for c, n in seen_in_val.items() if n > 1}
    if twice:
        folds = {c: [k for k, s in enumerate(splits) if c in s["val"]] for c in sorted(twice)}
        shown = "; ".join(f"{c} in folds {f}" for c, f in list(folds.items())[:5])
        raise ConfigError(
            f"{source}: {len(twice)} case(s) validated in more than one fold: {shown}"
        )
    never = known - set(seen_in_val)
    if never:
        raise ConfigError(
            f"{source}: {len(never)} case(s) never validated: {_few(never)}; every case must "
            "be in exactly one fold's 'val'"
        )
    return [{"train": list(s["train"]), "val": list(s["val"])} for s in splits]


def load_splits(
    path: str | Path, case_ids: Sequence[str], groups: Mapping[str, str] | None = None
) -> list[dict[str, list[str]]]:
    """Read a splits file (a list of ``{"train": [...], "val": [...]}``) and check it
    (:func:`check_splits`; ``groups`` defaults to :func:`patient_groups`' default rule).

    Raises:
        ConfigError: unreadable file, or splits that fail :func:`check_splits` (the message
            starts with the file name).
    """
    path = Path(path)
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read splits ({exc})") from None
    groups = groups if groups is not None else patient_groups(case_ids)
    return check_splits(splits, case_ids, groups, source=str(path))
