"""Stage 2: which series is t1 / t1ce / t2 / flair.

:class:`ModalityRules` holds ordered regex rules (:class:`ModalityRule`) on SeriesDescription,
ProtocolName and sequence attributes, configurable from YAML or a dict; the first matching
rule wins. The defaults cover common scanner names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydicom
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.dataset import Dataset

from transmed.data.labels import MODALITIES
from transmed.io.dicom.errors import _item

#: Pattern pieces shared by the default rules (matched on normalised text, see ModalityRule).
_T1_LIKE = r"\bt1|mp ?rage|\bspgr\b|\bfspgr\b|\bbravo\b|\bvibe\b|\btfe\b"
_POST = r"\bpost|contrast|\bgad|\bgd\b|gado|\+ ?c(?![a-z0-9])|\bce\b|\bc\+|\+ ?gd"
_PRE = r"\bpre\b|\bnon ?contrast|\bwithout\b|\bw/o\b|\bnative\b|\bplain\b"


class ModalityRule(BaseModel):
    """One rule: a series is ``modality`` when every ``match`` regex is found and no ``exclude``.

    The text searched is the series' ``fields`` (attribute keywords) joined by " | ", lower-cased,
    with ``_`` and ``-`` turned into spaces (so ``t1_mprage`` reads ``t1 mprage`` and ``\\b``
    works between words). ``contrast`` = True / False requires a contrast agent to be recorded
    / absent (ContrastBolusAgent, or ContrastBolusUsageSequence in enhanced images).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: str
    match: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    contrast: bool | None = None
    fields: list[str] = Field(
        default_factory=lambda: [
            "SeriesDescription",
            "ProtocolName",
            "SequenceName",
            "PulseSequenceName",
        ]
    )

    @field_validator("modality")
    @classmethod
    def _known_modality(cls, value: str) -> str:
        if value not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {value!r}")
        return value

    @field_validator("match", "exclude")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {p!r}: {exc}") from None
        return patterns

    def matches(self, ds: Dataset) -> bool:
        """Whether the header ``ds`` (the series' first instance) satisfies this rule."""
        text = series_text(ds, self.fields)
        if not all(re.search(p, text, re.IGNORECASE) for p in self.match):
            return False
        if any(re.search(p, text, re.IGNORECASE) for p in self.exclude):
            return False
        return self.contrast is None or has_contrast_agent(ds) == self.contrast


def series_text(ds: Dataset, fields: Iterable[str]) -> str:
    """Normalised text a rule searches: the fields' values, lower-cased, ``_``/``-`` -> space."""
    parts = []
    for name in fields:
        value = ds.get(name)
        if value is None or value == "":
            continue
        parts.append(
            " ".join(str(v) for v in value)
            if isinstance(value, list | tuple | pydicom.multival.MultiValue)
            else str(value)
        )
    return re.sub(r"[_\-]+", " ", " | ".join(parts).lower())


def has_contrast_agent(ds: Dataset) -> bool:
    """A contrast agent recorded: ContrastBolusAgent (classic) or ContrastBolusUsageSequence."""
    if str(ds.get("ContrastBolusAgent") or "").strip():
        return True
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    usage = ds.get("ContrastBolusUsageSequence") or (shared or Dataset()).get(
        "ContrastBolusUsageSequence"
    )
    return any(
        str(u.get("ContrastBolusAgentAdministered", "")).upper() == "YES" for u in usage or []
    )


def _default_rules() -> list[ModalityRule]:
    return [
        # FLAIR first (T2 FLAIR names contain "t2"); a "T1 FLAIR" (GE's T1-weighted sagittal) is
        # not a FLAIR for BraTS. BraTS 2023 calls FLAIR "t2f".
        ModalityRule(modality="flair", match=[r"flair|dark ?fluid|\bt2f\b"], exclude=[r"\bt1"]),
        # post-contrast T1 before T1: explicit names (T1CE, T1C, T1+C, T1GD, T1 POST) ...
        ModalityRule(
            modality="t1ce",
            match=[r"\bt1 ?w? ?(?:ce|c|gd|\+ ?c|\+ ?gd|\+|post|contrast)(?![a-z0-9])"],
        ),
        # ... a T1-like name with a contrast word and no "pre" ...
        ModalityRule(modality="t1ce", match=[_T1_LIKE, _POST], exclude=[_PRE]),
        # ... or a T1-like series with a contrast agent recorded in the header.
        ModalityRule(modality="t1ce", match=[_T1_LIKE], exclude=[_PRE], contrast=True),
        ModalityRule(modality="t1", match=[_T1_LIKE]),
        # T2 but not T2* / gradient-echo susceptibility (not a BraTS contrast).
        ModalityRule(modality="t2", match=[r"\bt2"], exclude=[r"t2 ?\*|t2 ?star|\bswi\b"]),
    ]


class ModalityRules(BaseModel):
    """Ordered rules mapping a series to a modality; the first matching rule wins.

    Load from YAML (``rules: [{modality: t1ce, match: [...], exclude: [...]}, ...]``) with
    :meth:`from_yaml`, or from a dict with :meth:`from_dict`; :meth:`default` covers common
    scanner names (see :func:`_default_rules`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[ModalityRule] = Field(default_factory=_default_rules)

    @classmethod
    def default(cls) -> ModalityRules:
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModalityRules:
        """Rules from ``{"rules": [...]}``; a ValueError (pydantic's) names a bad field."""
        return cls.model_validate(dict(data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModalityRules:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read modality rules ({exc})") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping with a 'rules' list")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: invalid modality rules: {exc}") from None

    def classify(self, ds: Dataset) -> str | None:
        """The modality of the series whose first header is ``ds``, or ``None``."""
        for rule in self.rules:
            if rule.matches(ds):
                return rule.modality
        return None
