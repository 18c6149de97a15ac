"""``evaluate`` end to end on tiny BraTS 2021 NIfTI files (labels 1/2/4), through typer."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from transmed.evaluation.cli import evaluate_cmd
from transmed.evaluation.metrics import HD95_ONE_EMPTY_MM

app = typer.Typer()
app.command("evaluate")(evaluate_cmd)


@app.callback()
def _root() -> None:
    """Local stand-in for the ``transmed`` app (the lead registers evaluate_cmd there)."""


runner = CliRunner()


def _folders(tmp: Path, write: Callable, tumour: Callable) -> tuple[Path, Path]:
    ref, pred = tmp / "BraTS2021", tmp / "pred"
    for case_id in ("BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"):
        write(ref / case_id / f"{case_id}_seg.nii.gz", tumour(), spacing=(1.0, 1.0, 1.5))
    write(pred / "BraTS2021_00000.nii.gz", tumour(), spacing=(1.0, 1.0, 1.5))  # perfect
    shifted = tumour(shift=1)  # every region one voxel (1 mm) off along x
    write(pred / "BraTS2021_00001.nii.gz", shifted, spacing=(1.0, 1.0, 1.5))
    return ref, pred  # BraTS2021_00002: no prediction


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as fh:
        return {(r["case"], r["region"]): r for r in csv.DictReader(fh)}


def test_evaluate_end_to_end(tmp_path: Path, write_label: Callable, tumour: Callable) -> None:
    ref, pred = _folders(tmp_path, write_label, tumour)
    out = tmp_path / "results" / "eval.csv"
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(ref),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2/3 cases evaluated" in result.output
    # the missing case is in the means as the worst case, and said so beside them
    assert "means over 3 cases, 1 of them missing or failed and scored as the worst case" \
        in result.output  # fmt: skip
    assert "ref brats2021" in result.output
    assert "missing prediction (scored as the worst case): BraTS2021_00002" in result.output
    rows = _rows(out)
    assert len(rows) == 9
    for region in ("WT", "TC", "ET"):
        perfect = rows[("BraTS2021_00000", region)]
        assert float(perfect["dice"]) == 1.0 and float(perfect["hd95"]) == 0.0
        assert float(perfect["sensitivity"]) == 1.0 and float(perfect["specificity"]) == 1.0
        assert float(perfect["lesion_dice"]) == 1.0
        missing = rows[("BraTS2021_00002", region)]
        assert missing["pred_missing"] == "1" and float(missing["dice"]) == 0.0
        assert float(missing["hd95"]) == pytest.approx(HD95_ONE_EMPTY_MM)
    # WT (648 voxels x 1.5 mm³) is a scored lesion; ET (27 mm³) is under the 50 mm³ threshold.
    assert rows[("BraTS2021_00000", "WT")]["lesion_tp"] == "1"
    assert rows[("BraTS2021_00000", "ET")]["lesion_tp"] == "0"
    worst = rows[("BraTS2021_00002", "ET")]  # missing: the worst case, also lesion-wise
    assert worst["worst_case"] == "1" and float(worst["lesion_dice"]) == 0.0
    assert float(worst["specificity"]) == 0.0 and float(worst["lesion_hd95"]) == 374.0
    # Shifted by one voxel along x: ET (3x3x2 voxels) keeps 2/3 of itself, HD95 is 1 mm.
    et = rows[("BraTS2021_00001", "ET")]
    assert float(et["dice"]) == pytest.approx(2 * 12 / (18 + 18))
    assert float(et["hd95"]) == pytest.approx(1.0)
    assert float(et["sensitivity"]) == pytest.approx(12 / 18)
    assert float(et["ref_volume_mm3"]) == pytest.approx(18 * 1.5)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["ref_labels"] == "brats2021" and summary["lesionwise"] is True
    wt_dice = [float(rows[(c, "WT")]["dice"]) for c in summary["cases"]]
    assert summary["metrics"]["WT"]["dice"]["mean"] == pytest.approx(np.mean(wt_dice))
    assert summary["metrics"]["WT"]["dice"]["median"] == pytest.approx(np.median(wt_dice))
    assert summary["metrics"]["ET"]["lesion_hd95"]["n"] == 3


def test_no_lesionwise_and_folder_output(
    tmp_path: Path, write_label: Callable, tumour: Callable
) -> None:
    ref, pred = _folders(tmp_path, write_label, tumour)
    out = tmp_path / "outdir"
    out.mkdir()
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(ref),
                                 "--out", str(out), "--no-lesionwise", "--labels", "brats2021"])
    assert result.exit_code == 0, result.output
    rows = _rows(out / "metrics.csv")
    assert "lesion_dice" not in next(iter(rows.values()))
    assert "lesion_dice" not in json.loads((out / "metrics.json").read_text())["metrics"]["WT"]


def test_failed_case_exits_1_after_writing(
    tmp_path: Path, write_label: Callable, tumour: Callable
) -> None:
    ref, pred = _folders(tmp_path, write_label, tumour)
    write_label(pred / "BraTS2021_00002.nii.gz", tumour(), spacing=(1.0, 1.0, 1.0))  # wrong grid
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(ref),
                                 "--out", str(out)])
    assert result.exit_code == 1
    assert "failed (scored as the worst case): BraTS2021_00002" in result.output
    assert "affine" in result.output and "1 of them missing or failed" in result.output
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["n_evaluated"] == 2 and "BraTS2021_00002" in summary["failed"]
    assert summary["n_worst_case"] == 1 and summary["n_in_means"] == 3
    assert list(summary["worst_case"]) == ["BraTS2021_00002"]
    rows = _rows(tmp_path / "eval.csv")
    failed = rows[("BraTS2021_00002", "WT")]
    assert failed["worst_case"] == "1" and float(failed["dice"]) == 0.0
    assert float(failed["hd95"]) == pytest.approx(HD95_ONE_EMPTY_MM) and "affine" in failed["error"]
    wt = [float(rows[(c, "WT")]["dice"]) for c in ("BraTS2021_00000", "BraTS2021_00001")]
    assert summary["metrics"]["WT"]["dice"]["mean"] == pytest.approx((wt[0] + wt[1] + 0.0) / 3)


def test_bad_arguments_exit_2(tmp_path: Path, write_label: Callable, tumour: Callable) -> None:
    ref, pred = _folders(tmp_path, write_label, tumour)
    missing = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref",
                                  str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "not a folder" in missing.output
    bad_labels = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(ref),
                                     "--out", str(tmp_path / "o"), "--labels", "brats2019"])
    assert bad_labels.exit_code == 2 and "brats2019" in bad_labels.output
    assert not (tmp_path / "o.csv").exists()


def test_read_only_out_folder_is_one_line_not_a_traceback(
    tmp_path: Path, write_label: Callable, tumour: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os
    import tempfile

    ref, pred = _folders(tmp_path, write_label, tumour)
    out = tmp_path / "mounted_ro"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes through modes: refuse temp files there instead
        real = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's own name)
            if dir is not None and Path(dir).resolve() == out.resolve():
                raise OSError(errno.EROFS, "Read-only file system", str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    try:
        result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(ref),
                                     "--out", str(out)])  # fmt: skip
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert str(out) in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
