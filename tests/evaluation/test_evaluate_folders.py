"""Folder evaluation: matching, label conventions, missing predictions, grid errors, outputs."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from transmed.evaluation.evaluate import (
    evaluate_folders,
    output_paths,
    pair_cases,
    write_report,
)
from transmed.evaluation.metrics import HD95_ONE_EMPTY_MM, hd95

BRATS21 = {0: 0, 1: 1, 2: 2, 4: 3}  # file value -> internal label, written out by hand


def _brats2021(root: Path, cases: dict[str, np.ndarray], write: Callable, **kw) -> Path:
    """``root/{case}/{case}_seg.nii.gz`` plus a decoy image file per case."""
    for case_id, lab in cases.items():
        write(root / case_id / f"{case_id}_seg.nii.gz", lab, **kw)
        write(root / case_id / f"{case_id}_t1.nii.gz", np.zeros_like(lab), **kw)
    return root


def test_brats_layout_perfect_missing_and_unmatched(
    tmp_path: Path, write_label: Callable, tumour: Callable
) -> None:
    ref = _brats2021(tmp_path / "ref", {"c1": tumour(), "c2": tumour()}, write_label)
    pred = tmp_path / "pred"
    write_label(pred / "c1.nii.gz", tumour())  # perfect
    write_label(pred / "ghost.nii.gz", tumour())  # no reference
    write_label(pred / ".c2.nii.gz.tmp.nii.gz", tumour())  # hidden: ignored
    report = evaluate_folders(pred, ref, progress=False)
    assert report.ref_labels == "brats2021"  # from the *_seg names
    assert [r.case_id for r in report.results] == ["c1", "c2"]
    c1, c2 = report.results
    assert not c1.pred_missing and c2.pred_missing
    for region in ("WT", "TC", "ET"):
        assert c1.metrics[region]["dice"] == 1.0 and c1.metrics[region]["hd95"] == 0.0
        assert c1.metrics[region]["lesion_dice"] == 1.0
        assert c2.metrics[region]["dice"] == 0.0  # missing = the worst case, never dropped
        assert c2.metrics[region]["hd95"] == HD95_ONE_EMPTY_MM
        assert c2.metrics[region]["sensitivity"] == 0.0
    summary = report.summary()
    assert summary["missing_predictions"] == ["c2"]
    assert summary["unmatched_predictions"] == [str(pred / "ghost.nii.gz")]
    assert summary["metrics"]["WT"]["dice"] == {"mean": 0.5, "sd": pytest.approx(2**-0.5),
                                                "median": 0.5, "n": 2}
    assert summary["cases"] == ["c1", "c2"] and summary["failed"] == {}


def test_metric_values_follow_the_label_mapping_and_file_spacing(
    tmp_path: Path, write_label: Callable, tumour: Callable
) -> None:
    spacing = (1.0, 0.9, 2.5)
    ref_lab, pred_lab = tumour(), tumour(shift=2)
    _brats2021(tmp_path / "ref", {"a": ref_lab}, write_label, spacing=spacing)
    write_label(tmp_path / "pred" / "a.nii.gz", pred_lab, spacing=spacing)
    res = evaluate_folders(tmp_path / "pred", tmp_path / "ref", progress=False).results[0]
    lut = np.zeros(5, dtype=np.uint8)
    for k, v in BRATS21.items():
        lut[k] = v
    ref_int, pred_int = lut[ref_lab], lut[pred_lab]
    for region, members in (("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,))):
        r, p = np.isin(ref_int, members), np.isin(pred_int, members)
        assert res.metrics[region]["hd95"] == pytest.approx(hd95(p, r, spacing))
        assert res.metrics[region]["dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
    assert res.metrics["WT"]["hd95"] == pytest.approx(2.0)  # a 2-voxel shift along x (1 mm)
    assert res.spacing == pytest.approx(spacing)


def test_grid_mismatch_fails_that_case_only(
    tmp_path: Path, write_label: Callable, tumour: Callable
) -> None:
    ref = _brats2021(tmp_path / "ref", {"ok": tumour(), "shape": tumour(), "moved": tumour()},
                     write_label)
    pred = tmp_path / "pred"
    write_label(pred / "ok.nii.gz", tumour())
    write_label(pred / "shape.nii.gz", tumour(shape=(16, 16, 13)))
    write_label(pred / "moved.nii.gz", tumour(), offset=(0.0, 0.5, 0.0))
    report = evaluate_folders(pred, ref, progress=False)
    failed = report.failed
    assert set(failed) == {"shape", "moved"}
    assert "shape" in failed["shape"] and "shape.nii.gz" in failed["shape"]
    assert "affine" in failed["moved"] and "0.5" in failed["moved"]
    summary = report.summary()
    # never dropped: both count in the means as the worst case (BraTS: Dice 0, HD95 373.13 mm)
    assert summary["n_evaluated"] == 1 and summary["n_worst_case"] == 2
    assert summary["metrics"]["ET"]["dice"] == {"mean": pytest.approx(1 / 3),
                                                "sd": pytest.approx(3**-0.5), "median": 0.0,
                                                "n": 3}  # fmt: skip
    assert summary["metrics"]["WT"]["hd95"]["mean"] == pytest.approx(2 * HD95_ONE_EMPTY_MM / 3)
    assert set(summary["worst_case"]) == {"shape", "moved"}
    rows = [r for r in report.rows() if r["case"] == "moved"]
    assert len(rows) == 3 and all(r["dice"] == 0.0 and r["worst_case"] == 1 and r["error"]
                                  for r in rows)  # fmt: skip


def test_unknown_label_value_names_the_file(
    tmp_path: Path, write_label: Callable, tumour: Callable
) -> None:
    ref = _brats2021(tmp_path / "ref", {"a": tumour()}, write_label)
    bad = tumour()
    bad[bad == 4] = 3  # BraTS 2023's ET value in a BraTS 2021 folder
    write_label(tmp_path / "pred" / "a.nii.gz", bad)
    report = evaluate_folders(tmp_path / "pred", ref, progress=False)
    assert "a.nii.gz" in report.failed["a"] and "3" in report.failed["a"]
    ok = evaluate_folders(tmp_path / "pred", ref, pred_labels="brats2023", progress=False)
    assert ok.failed == {} and ok.results[0].metrics["ET"]["dice"] == 1.0


def test_flat_folders_need_a_convention_and_dataset_json_decides(
    tmp_path: Path, write_label: Callable
) -> None:
    lab = np.zeros((8, 8, 8), dtype=np.uint8)
    lab[2:6, 2:6, 2:6] = 1  # oedema in MSD, necrotic core in BraTS 2023
    write_label(tmp_path / "flat" / "x.nii.gz", lab)
    write_label(tmp_path / "pred" / "x.nii.gz", lab)
    with pytest.raises(ValueError, match="--labels"):
        evaluate_folders(tmp_path / "pred", tmp_path / "flat", progress=False)
    brats23 = evaluate_folders(tmp_path / "pred", tmp_path / "flat", labels="brats2023",
                               progress=False).results[0].metrics
    assert brats23["TC"]["ref_volume_mm3"] == 64.0
    msd = tmp_path / "Task01_BrainTumour"
    write_label(msd / "labelsTr" / "x.nii.gz", lab)
    (msd / "dataset.json").write_text(json.dumps({"labels": {
        "0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}))
    report = evaluate_folders(tmp_path / "pred", msd, progress=False)
    assert report.ref_labels == "msd"
    assert report.results[0].metrics["TC"]["ref_volume_mm3"] == 0.0  # label 1 = oedema
    assert report.results[0].metrics["WT"]["ref_volume_mm3"] == 64.0


def test_pairing_rules(tmp_path: Path, write_label: Callable) -> None:
    lab = np.zeros((4, 4, 4), dtype=np.uint8)
    write_label(tmp_path / "ref" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz", lab)
    write_label(tmp_path / "pred" / "BraTS-GLI-00001-000-seg.nii.gz", lab)
    pairs = pair_cases(tmp_path / "pred", tmp_path / "ref")
    assert pairs.seg_suffixes == {"-seg"}
    assert pairs.pairs[0].case_id == "BraTS-GLI-00001-000"
    assert pairs.pairs[0].pred is not None and pairs.unmatched_predictions == []
    write_label(tmp_path / "ref" / "other" / "BraTS-GLI-00001-000-seg.nii.gz", lab)
    with pytest.raises(ValueError, match="appears twice"):
        pair_cases(tmp_path / "pred", tmp_path / "ref")
    with pytest.raises(ValueError, match="not a folder"):
        pair_cases(tmp_path / "nope", tmp_path / "ref")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no reference label files"):
        pair_cases(tmp_path / "pred", tmp_path / "empty")


def test_output_paths(tmp_path: Path) -> None:
    assert output_paths(tmp_path) == (tmp_path / "metrics.csv", tmp_path / "metrics.json")
    assert output_paths(tmp_path / "r.csv") == (tmp_path / "r.csv", tmp_path / "r.json")
    assert output_paths(tmp_path / "r.json") == (tmp_path / "r.csv", tmp_path / "r.json")
    assert output_paths(tmp_path / "eval.v1") == (tmp_path / "eval.v1.csv",
                                                  tmp_path / "eval.v1.json")


def test_write_report_and_workers(tmp_path: Path, write_label: Callable, tumour: Callable) -> None:
    cases = {f"c{i}": tumour(shift=i % 3) for i in range(4)}
    ref = _brats2021(tmp_path / "ref", cases, write_label)
    for i in range(3):  # c3 has no prediction
        write_label(tmp_path / "pred" / f"c{i}.nii.gz", tumour())
    serial = evaluate_folders(tmp_path / "pred", ref, progress=False)
    parallel = evaluate_folders(tmp_path / "pred", ref, workers=2, progress=False)
    assert [r.metrics for r in parallel.results] == [r.metrics for r in serial.results]
    csv_path, json_path = write_report(serial, tmp_path / "out" / "eval")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.csv", "eval.json"]
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 3
    assert {"dice", "hd95", "sensitivity", "specificity", "lesion_dice", "lesion_hd95",
            "lesion_fp", "pred_missing", "error"} <= set(rows[0])
    c3 = [r for r in rows if r["case"] == "c3"]
    assert all(r["pred_missing"] == "1" and float(r["dice"]) == 0.0 for r in c3)
    c0_wt = next(r for r in rows if r["case"] == "c0" and r["region"] == "WT")
    assert float(c0_wt["dice"]) == 1.0
    summary = json.loads(json_path.read_text())
    assert summary["metrics"]["WT"]["dice"]["n"] == 4
    assert summary["metrics"]["WT"]["dice"]["mean"] == pytest.approx(
        np.mean([float(r["dice"]) for r in rows if r["region"] == "WT"]))
    assert summary["missing_predictions"] == ["c3"] and summary["csv"] == str(csv_path)


def test_worst_case_scores_reach_the_comparison_too(
    tmp_path: Path, write_label: Callable, tumour: Callable
) -> None:
    """``transmed compare`` reads evaluate's CSV: a failed case stays in its means and pairs."""
    from transmed.evaluation.compare import load_run

    no_et = tumour()
    no_et[no_et == 4] = 1  # c has no enhancing tumour: an empty guess would score ET Dice 1
    ref = _brats2021(tmp_path / "ref", {"a": tumour(), "b": tumour(), "c": no_et}, write_label)
    write_label(tmp_path / "pred" / "a.nii.gz", tumour())
    write_label(tmp_path / "pred" / "b.nii.gz", tumour(shape=(16, 16, 13)))  # wrong grid
    report = evaluate_folders(tmp_path / "pred", ref, progress=False)  # c: missing
    write_report(report, tmp_path / "run" / "evaluation")
    run = load_run(tmp_path / "run")
    assert run.cases == ["a", "b", "c"] and set(run.failed) == {"b", "c"}
    assert run.values["dice"]["WT"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert run.values["dice"]["ET"] == {"a": 1.0, "b": 0.0, "c": 0.0}  # missing: not flattered
    assert run.summary("hd95", "ET")["mean"] == pytest.approx(2 * HD95_ONE_EMPTY_MM / 3)


def test_label_4_in_plain_references_means_brats2021(
    tmp_path: Path, write_label: Callable, tumour: Callable
) -> None:
    for case in ("x", "y"):  # plain {case}.nii.gz files, no dataset.json, no *_seg names
        write_label(tmp_path / "flat" / f"{case}.nii.gz", tumour())  # values 0, 1, 2, 4
        write_label(tmp_path / "pred" / f"{case}.nii.gz", tumour())
    report = evaluate_folders(tmp_path / "pred", tmp_path / "flat", progress=False)
    assert report.ref_labels == "brats2021" and report.failed == {}
    assert report.results[0].metrics["ET"]["dice"] == 1.0
    three = tumour()
    three[three == 4] = 3  # a BraTS 2023 / MSD value beside BraTS 2021's 4: no convention fits
    write_label(tmp_path / "flat" / "w.nii.gz", three)
    with pytest.raises(ValueError, match=r"both 3 .*w\.nii\.gz.* and 4 .*--labels"):
        evaluate_folders(tmp_path / "pred", tmp_path / "flat", progress=False)
