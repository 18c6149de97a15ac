"""Keeping patient identifiers out of logs and state files.

The node logs studies by a hash of their UID and writes its own reasons, so identifiers have no
way in by design. Exception messages from the reading and inference code are the one channel
it does not control; :func:`redact` removes the study's identifiers from them before they are
logged or recorded, as a second line of defence.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

#: Attributes whose values identify the patient (PS3.15 E.1-1 basic profile, the ones that are
#: plain text and could end up in a message).
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "MedicalRecordLocator",
    "IssuerOfPatientID",
    "ReferringPhysicianName",
    "InstitutionName",
)

REDACTED = "[redacted]"


def identifiers_of(ds: object) -> set[str]:
    """The identifying strings of a dataset: whole values and name components (≥ 3 chars)."""
    from pydicom.multival import MultiValue

    found: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            value = getattr(ds, keyword, None)
        except Exception:  # an undecodable value identifies nothing we could print
            continue
        if value is None:
            continue
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        for v in values:
            text = str(v).strip()
            if len(text) >= 3:
                found.add(text)
            for part in re.split(r"[\^=\s,]+", text):
                if len(part) >= 3:
                    found.add(part)
    return found


def identifiers_in_folder(folder: Path, max_files: int = 1) -> set[str]:
    """Identifiers from the first ``max_files`` DICOM files under ``folder`` (headers only)."""
    from pydicom import dcmread

    found: set[str] = set()
    for n, path in enumerate(sorted(folder.rglob("*.dcm"))):
        if n >= max_files:
            break
        try:
            found |= identifiers_of(dcmread(path, stop_before_pixels=True))
        except Exception:
            continue
    return found


def redact(text: str, identifiers: set[str]) -> str:
    """``text`` with every identifier replaced (case-insensitive, longest first)."""
    for ident in sorted(identifiers, key=len, reverse=True):
        text = re.sub(re.escape(ident), REDACTED, text, flags=re.IGNORECASE)
    return text


class WithholdValues(logging.Filter):
    """Rewrites pydicom's "Invalid value for VR XX: '<value>'" records without the value.

    pydicom logs the offending value of a malformed element, which for a PN or LO element can
    be a patient's name or ID. The node installs this filter on the ``pydicom`` logger.
    """

    _VALUE = re.compile(r"^(Invalid value for VR \w+)[:\s].*$", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        m = self._VALUE.match(message)
        if m:
            record.msg, record.args = f"{m.group(1)} (value withheld)", None
        return True


def install_log_guards() -> None:
    """Install :class:`WithholdValues` on the ``pydicom`` logger (idempotent)."""
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, WithholdValues) for f in logger.filters):
        logger.addFilter(WithholdValues())
