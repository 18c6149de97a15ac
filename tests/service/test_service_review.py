"""Processed studies stay for review in ``transmed view`` (``review_retention_s``), then go.

The viewer opens a node's study from ``jobs/<id>/input/`` (the DICOM series the corrected SEG
must reference) and the predicted SEG (``outbox/`` until delivered, then the job's
``output/`` copy); these tests check the node leaves exactly that behind, and purges it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid
from service_helpers import FakePrediction, fake_predict

from transmed.service.assembler import JobQueue
from transmed.service.config import ServiceConfig
from transmed.service.jobs import JobRecord, JobStore
from transmed.service.metrics import Metrics
from transmed.service.outbox import Outbox
from transmed.service.storage import DiskBudget
from transmed.service.worker import InferenceWorker

DAY = 24 * 3600.0


def _job(jobs: JobStore, n_files: int = 2, size: int = 1000) -> JobRecord:
    record = jobs.write(
        JobRecord(
            f"20260101T0000{len(list(jobs.root.iterdir())):02d}-abc-000001",
            generate_uid(),
            "abc",
            state="received",
            bytes=n_files * size,
        )
    )
    inp = jobs.input_dir(record.job_id)
    inp.mkdir(parents=True)
    for k in range(n_files):
        (inp / f"{k}.dcm").write_bytes(b"x" * size)
    return record


def _worker(jobs: JobStore, root: Path, predict=fake_predict) -> InferenceWorker:
    return InferenceWorker(jobs, JobQueue(1), Outbox(root), DiskBudget(10**6, 2000), Metrics(),
                           None, predict_fn=predict)  # fmt: skip


@pytest.mark.parametrize("retention", [0.0, DAY])
def test_a_processed_study_is_kept_for_review_only_when_configured(tmp_path, retention) -> None:
    jobs = JobStore(tmp_path, review_retention_s=retention)
    record = _job(jobs)
    worker = _worker(jobs, tmp_path)
    done = worker.process(record.job_id)
    assert done.state == "done" and worker.budget.used == 0  # out of the incoming budget
    inp, out = jobs.input_dir(record.job_id), jobs.output_dir(record.job_id)
    if retention:
        assert len(list(inp.glob("*.dcm"))) == 2
        (kept,) = out.glob("*.dcm")  # the SEG's copy: the outbox deletes its own once sent
        sent = Outbox(tmp_path).dcm_path(done.seg_sop_instance_uid)
        assert kept.read_bytes() == sent.read_bytes()
    else:
        assert not inp.exists() and not out.exists()
    assert (jobs.folder(record.job_id) / "state.json").is_file()


def test_purge_deletes_kept_studies_past_retention_then_beyond_the_cap(tmp_path) -> None:
    jobs = JobStore(tmp_path, review_retention_s=2 * DAY, max_review_bytes=3500)
    worker = _worker(jobs, tmp_path)
    records = [worker.process(_job(jobs).job_id) for _ in range(3)]  # ~2 kB each with its SEG
    waiting = _job(jobs)  # not processed yet: never the purge's
    review = jobs.folder(records[1].job_id) / "review"
    review.mkdir()
    (review / "x_corrected.json").write_text("{}")
    t0 = max(r.finished_at for r in records)  # type: ignore[type-var]
    # over the cap (3 × ~2 kB > 3.5 kB): the oldest go until it fits
    assert jobs.purge_reviews(now=t0) == [records[0].job_id, records[1].job_id]
    assert (review / "x_corrected.json").is_file()  # a reviewer's work stays
    assert jobs.purge_reviews(now=t0) == []
    assert jobs.purge_reviews(now=t0 + 3 * DAY) == [records[2].job_id]  # past retention
    assert jobs.input_dir(waiting.job_id).is_dir()


def test_config_default_keeps_studies_for_review(tmp_path) -> None:
    cfg = ServiceConfig(storage_dir=tmp_path, model=tmp_path / "m.pt", ae_title="TRANSMED",
                        destination={"type": "dicom", "ae_title": "P", "host": "127.0.0.1",
                                     "port": 1})  # fmt: skip
    assert cfg.review_retention_s == 3 * DAY and cfg.max_review_bytes > 0


@pytest.mark.slow  # the synthetic DICOM study: ~25 s on 2 busy cores
def test_the_viewer_opens_a_delivered_study(tmp_path) -> None:
    """End to end on disk: a real study and SEG through the worker, the SEG delivered (gone
    from the outbox), then ``transmed view STORAGE`` lists it and opens it."""
    from transmed.data.synth.dicom import write_dicom_study
    from transmed.io.dicom import load_study
    from transmed.viewer.saving import seg_module
    from transmed.viewer.sources import catalogue
    from transmed.viewer.volumes import load

    synth = write_dicom_study(tmp_path / "synth", shape=(24, 24, 16))
    label = np.asarray(synth.label.data, dtype=np.uint8)
    root = tmp_path / "storage"
    jobs = JobStore(root, review_retention_s=DAY)
    record = jobs.write(JobRecord("20260101T000000-abc-000001", synth.study_uid, "abc"))
    source = Path(next(iter(synth.files.values()))[0]).parents[1]
    shutil.copytree(source, jobs.input_dir(record.job_id))

    def predict(predictor, study, out_dir, **kwargs):
        seg = seg_module().build_seg(label, load_study(study).series["t1ce"])
        out_dir.mkdir(parents=True, exist_ok=True)
        path = seg_module().write_seg(seg, out_dir / "seg.dcm")
        return FakePrediction(path, str(seg.SOPInstanceUID))

    done = _worker(jobs, root, predict).process(record.job_id)
    outbox = Outbox(root)
    outbox.dcm_path(done.seg_sop_instance_uid).unlink()  # delivered: the outbox drops its copy
    cat = catalogue(root)
    (case,) = cat.cases
    assert case.problem is None and case.job_id == record.job_id
    loaded = load(case)
    assert np.array_equal(loaded.internal, label)  # the prediction, on the T1ce's grid
