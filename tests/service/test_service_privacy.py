"""No patient identifiers in the logs or state files, even when a library echoes them."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from service_helpers import (
    PATIENT_ID,
    PATIENT_NAME,
    FakeSender,
    make_config,
    mr_dataset,
    store_datasets,
    wait_until,
)

from transmed.service.privacy import WithholdValues, identifiers_of, redact
from transmed.service.service import DicomNode

BIRTH_DATE = "1961-07-23X"  # malformed DA: pydicom's validation would echo it


def test_identifiers_and_redaction():
    ds = Dataset()
    ds.PatientName = "Doe^Johnathan^^Dr"
    ds.PatientID = "MRN-1234"
    ds.OtherPatientIDs = ["A12", "B34"]
    ds.PatientBirthDate = "19700101"
    found = identifiers_of(ds)
    assert {"Doe^Johnathan^^Dr", "Doe", "Johnathan", "MRN-1234", "A12", "B34", "19700101"} <= found
    text = "failed for doe^johnathan^^dr (MRN-1234), born 19700101, alias Johnathan"
    out = redact(text, found)
    assert not any(v.lower() in out.lower() for v in found)
    assert out.count("[redacted]") == 4


def test_pydicom_value_echo_is_withheld(caplog):
    logger = logging.getLogger("pydicom")
    logger.addFilter(WithholdValues())
    try:
        with caplog.at_level(logging.WARNING, logger="pydicom"):
            logger.warning("Invalid value for VR PN: 'Zzyzx^Quintavius\\n'. Please see ...")
            logger.warning("The value length (81) exceeds the maximum length of 64")
    finally:
        logger.filters = [f for f in logger.filters if not isinstance(f, WithholdValues)]
    assert "Zzyzx" not in caplog.text
    assert "Invalid value for VR PN (value withheld)" in caplog.text
    assert "exceeds the maximum length" in caplog.text


def test_identifiers_stay_out_of_logs_and_state(tmp_path, caplog):
    """A study whose identifiers are echoed by pydicom (malformed values) and by the inference
    code (an exception message quoting them): the logs and the state file show none of them."""

    def leaky_predict(predictor, study, out_dir, **kwargs):
        raise ValueError(f"cannot segment {PATIENT_NAME} ({PATIENT_ID}, born {BIRTH_DATE})")

    caplog.set_level(logging.DEBUG)
    cfg = make_config(tmp_path)
    with DicomNode(cfg, predictor=object(), sender=FakeSender(), predict_fn=leaky_predict) as n:
        study, series = generate_uid(), generate_uid()
        sets = []
        for k in range(3):
            ds = mr_dataset(study_uid=study, series_uid=series, k=k)
            ds.PatientBirthDate = BIRTH_DATE
            ds.PatientName = PATIENT_NAME + "\n"  # a trailing newline: invalid PN
            sets.append(ds)
        assert store_datasets(n.dicom_port, sets) == [0, 0, 0]
        record = wait_until(lambda: next((r for r in n.jobs.all() if r.state == "failed"), None))
        state_text = (n.jobs.folder(record.job_id) / "state.json").read_text()
    assert "[redacted]" in record.reason and "ValueError" in record.reason
    for secret in (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID, BIRTH_DATE):
        assert secret not in caplog.text
        assert secret not in state_text
    assert f"job {record.job_id} failed" in caplog.text
    assert "(value withheld)" in caplog.text  # pydicom did try to echo a value
