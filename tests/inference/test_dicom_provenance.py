"""DICOM: a series with another FrameOfReferenceUID is registered automatically, said in the
result and the provenance; the SEG carries the provenance's key facts."""

from __future__ import annotations

import json

import pydicom

from transmed.data.synth.dicom import write_dicom_study
from transmed.inference.dicom import predict_dicom_study
from transmed.inference.predictor import Predictor


def test_other_frame_of_reference_is_registered_and_recorded(checkpoint_factory, tmp_path):
    write_dicom_study(tmp_path / "s", shape=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    for path in (tmp_path / "s").rglob("*.dcm"):  # the T2 series gets its own frame
        ds = pydicom.dcmread(path)
        if "T2" in str(ds.SeriesDescription).upper() and "FLAIR" not in str(
            ds.SeriesDescription
        ).upper():
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.999.1"
            ds.save_as(path)
    ckpt = checkpoint_factory(tmp_path / "m.pt", coregistration="auto")
    predictor = Predictor.from_path(ckpt)
    result = predict_dicom_study(predictor, tmp_path / "s", tmp_path / "out")
    assert result.other_frame_of_reference == ["t2"]
    assert result.registered == ["t2"]
    doc = json.loads(result.provenance_path.read_text())
    assert doc["coregistration"]["other_frame_of_reference"] == ["t2"]
    assert "residual_mm" in doc["registration"]["t2"]
    assert doc["series"]["t1ce"]["series_instance_uid"] == result.reference_series_uid
    seg = pydicom.dcmread(result.seg_path)
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    params = json.loads(algo.AlgorithmParameters)
    assert "t2" in params["registration"]
    assert doc["model"][0]["sha256"][:16] in algo.AlgorithmVersion
