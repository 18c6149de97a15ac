"""``transmed report``: a self-contained HTML page from a run folder, with and without images."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
from fake_runs import make_run
from typer.testing import CliRunner

from transmed.evaluation.cli_compare import report_cmd
from transmed.evaluation.report import (
    build_report,
    dataset_folder,
    pick_cases,
    to_ras,
    tumour_centre,
)

app = typer.Typer()
app.command("report")(report_cmd)


@app.callback()
def _root() -> None:
    """Local stand-in for the ``transmed`` app (the lead registers report_cmd there)."""


runner = CliRunner()
SHAPE = (32, 32, 24)
#: LPS-stored voxels (x and y flipped), 1.5 mm slices: voxel i -> world x = 16 - i (mm).
AFFINE = np.array([[-1.0, 0, 0, 16.0], [0, -1.0, 0, 16.0], [0, 0, 1.5, -18.0], [0, 0, 0, 1]])
#: Tumour centre in voxels: world x = +6 mm (patient's right), y = +6 mm (anterior).
CENTRE = np.array([10, 10, 12])
BRATS2021 = np.array([0, 1, 2, 4], dtype=np.uint8)  # internal 0..3 -> file values


def _tumour(shift: tuple[int, int, int] = (0, 0, 0), scale: float = 1.0) -> np.ndarray:
    """Internal labels: oedema ball r 6 vox, core r 3.5, enhancing shell of the core."""
    grid = np.indices(SHAPE).astype(float)
    d = np.sqrt(sum(((grid[a] - CENTRE[a] - shift[a]) * (1.5 if a == 2 else 1.0)) ** 2
                    for a in range(3)))
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[d < 6 * scale] = 2
    lab[d < 3.5 * scale] = 3
    lab[d < 2.0 * scale] = 1
    return lab


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), AFFINE), str(path))


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A BraTS 2021 dataset of 3 cases and a run whose predictions are good, fair and poor."""
    from transmed.evaluation.evaluate import evaluate_folders, write_report

    root = tmp_path_factory.mktemp("report")
    data, run = root / "BraTS2021", root / "run"
    grid = np.indices(SHAPE).astype(float)
    head = ((grid[0] - 15.5) / 14) ** 2 + ((grid[1] - 15.5) / 15) ** 2 + \
        ((grid[2] - 11.5) / 11) ** 2 < 1
    rng = np.random.default_rng(0)
    predictions = {0: _tumour(), 1: _tumour(shift=(2, 1, 0)), 2: _tumour(shift=(4, -3, 1),
                                                                          scale=0.7)}
    make_run(run, "unet", {}, data=str(data))
    for i, pred in predictions.items():
        case = f"BraTS2021_{i:05d}"
        ref = _tumour()
        for m, tumour_gain in (("t1", 0.8), ("t1ce", 1.6), ("t2", 1.4), ("flair", 1.8)):
            image = head * 100.0 * np.where(ref > 0, tumour_gain, 1.0)
            _save(data / case / f"{case}_{m}.nii.gz",
                  (image + head * rng.normal(0, 5, SHAPE)).astype(np.float32))
        _save(data / case / f"{case}_seg.nii.gz", BRATS2021[ref])
        _save(run / "predictions" / f"{case}.nii.gz", BRATS2021[pred])
    report = evaluate_folders(run / "predictions", data, progress=False)
    write_report(report, run / "evaluation")
    return run, data


def _mean_dice(csv_path: Path) -> dict[str, float]:
    per_case: dict[str, list[float]] = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            per_case.setdefault(row["case"], []).append(float(row["dice"]))
    return {c: float(np.mean(v)) for c, v in per_case.items()}


def _self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)  # only data: URIs
    assert "<link" not in page and "<script" not in page


def test_report_with_overlays(evaluated_run: tuple[Path, Path]) -> None:
    run, _ = evaluated_run
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    _self_contained(page)
    # training curves + one overlay per case (best, median, worst)
    assert page.count("data:image/png;base64,") == 4
    scores = _mean_dice(run / "evaluation.csv")
    ranked = sorted(scores, key=scores.get)
    assert ranked == ["BraTS2021_00002", "BraTS2021_00001", "BraTS2021_00000"]
    for tag, case in (("best", ranked[2]), ("median", ranked[1]), ("worst", ranked[0])):
        assert f"<h3>{tag}: {case}</h3>" in page
    assert "Case images unavailable" not in page and "No overlay" not in page
    text = html.unescape(page)
    assert '"model": "unet"' in text and '"patch_size": [' in text  # the config
    wt = [float(r["dice"]) for r in csv.DictReader(open(run / "evaluation.csv"))
          if r["region"] == "WT"]
    assert f"{np.mean(wt):.3f} ± {np.std(wt, ddof=1):.3f}" in text  # the metrics table
    assert "Lesion-wise Dice" in text  # lesion-wise columns of the real evaluation


def test_report_notes_a_missing_prediction(evaluated_run: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    run, data = evaluated_run
    moved = tmp_path / "BraTS2021_00002.nii.gz"
    (run / "predictions" / "BraTS2021_00002.nii.gz").rename(moved)
    try:
        page = build_report(run)
    finally:
        moved.rename(run / "predictions" / "BraTS2021_00002.nii.gz")
    assert page.count("data:image/png;base64,") == 3
    assert "No overlay: no prediction file" in page and "BraTS2021_00002" in page


def test_cv_report_reads_out_of_fold_predictions(evaluated_run: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    run, data = evaluated_run
    cv = make_run(tmp_path / "cv", "transmed_d", {}, data=str(data), cv_folds=2)
    shutil.copytree(run / "predictions", cv / "oof")
    for name in ("evaluation.csv", "evaluation.json"):
        shutil.copy(run / name, cv / name)
    page = build_report(cv)
    _self_contained(page)
    assert "cross-validation" in page and "No overlay" not in page
    assert page.count("data:image/png;base64,") == 4  # fold curves + three overlays
    shutil.rmtree(cv / "oof")
    assert build_report(cv).count("No overlay: no prediction file") == 3


def test_report_without_images_for_a_cv_folder(tmp_path: Path) -> None:
    dice = {f"case_{i}": [0.5 + 0.04 * i, 0.45 + 0.03 * i, 0.4 + 0.05 * i] for i in range(6)}
    cv = make_run(tmp_path / "cv", "transmed_full", dice, cv_folds=3)  # data folder missing
    out = tmp_path / "pages" / "cv.html"
    result = runner.invoke(app, ["report", str(cv), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    _self_contained(page)
    assert "Case images unavailable" in page and "no_such_data" in page
    assert page.count("data:image/png;base64,") == 1  # the training curves only
    for tag, case in (("best", "case_5"), ("median", "case_2"), ("worst", "case_0")):
        assert f"<h3>{tag}: {case}</h3>" in page
    assert "cross-validation" in page and "transmed_full" in page


def test_report_refuses_a_folder_without_evaluation(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "no evaluation.csv" in result.output and isinstance(result.exception, SystemExit)


def test_pick_cases_tags() -> None:
    class _Run:
        values = {"dice": {"mean": {"a": 0.9, "b": 0.2, "c": 0.5, "d": 0.6, "e": float("nan")}}}

    assert pick_cases(_Run()) == {"a": ["best"], "c": ["median"], "b": ["worst"]}  # type: ignore[arg-type]
    _Run.values = {"dice": {"mean": {"only": 0.7}}}
    assert pick_cases(_Run()) == {"only": ["best", "median", "worst"]}  # type: ignore[arg-type]


def test_dataset_folder_follows_a_preprocessed_folder(tmp_path: Path) -> None:
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    pre.mkdir()
    (pre / "dataset.json").write_text(json.dumps({"kind": "preprocessed", "source": str(raw)}))
    assert dataset_folder({"data": str(pre)}) == raw
    assert dataset_folder({"data": str(raw)}) == raw
    assert dataset_folder({"data": "elsewhere"}, override=raw) == raw
    with pytest.raises(ValueError, match="names no dataset"):
        dataset_folder({})
    (pre / "dataset.json").write_text(json.dumps({"kind": "preprocessed",
                                                  "source": str(tmp_path / "gone")}))
    with pytest.raises(ValueError, match="gone not found"):
        dataset_folder({"data": str(pre)})


def test_to_ras_flips_and_permutes_axes() -> None:
    data = np.arange(24).reshape(2, 3, 4)
    flipped, spacing = to_ras(data, np.diag([-2.0, 1.0, 3.0, 1.0]))
    np.testing.assert_array_equal(flipped, data[::-1])
    assert spacing == (2.0, 1.0, 3.0)
    swapped = np.array([[0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    permuted, spacing = to_ras(data, swapped)  # array axis 0 runs along world y
    np.testing.assert_array_equal(permuted, data.transpose(1, 0, 2))
    assert spacing == (1.0, 2.0, 3.0)
    lab = np.zeros((5, 5, 5))
    assert tumour_centre(lab) == (2, 2, 2)
    lab[1, 3, 4] = 1
    assert tumour_centre(np.zeros((5, 5, 5)), lab) == (1, 3, 4)


def test_study_report_covers_every_run_and_the_comparison(tmp_path: Path) -> None:
    """The demo's report.html: one page, the comparison first, then each model's sections."""
    cases = [f"case_{i}" for i in range(6)]
    full = make_run(tmp_path / "transmed_full", "transmed_full",
                    {c: [0.8 + 0.01 * i] * 3 for i, c in enumerate(cases)})  # fmt: skip
    unet = make_run(tmp_path / "unet", "unet",
                    {c: [0.7 + 0.01 * i] * 3 for i, c in enumerate(cases)})  # fmt: skip
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(full), str(unet), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    _self_contained(page)
    assert "<h1>TransMed study: transmed_full, unet</h1>" in page
    for model in ("transmed_full", "unet"):  # each run's own sections, one level down
        assert f"<h2>{model} — training run</h2>" in page
    assert page.count("<h3>Metrics</h3>") == 2 and page.count("<h3>Training curves</h3>") == 2
    # the comparison: runs table, paired differences (+0.100 for every case), box plots
    assert page.index("Comparison of 2 runs") < page.index("<h2>transmed_full — training run")
    assert "<td>transmed_full</td><td>WT</td><td>6</td><td>+0.100</td>" in page
    assert page.count("data:image/png;base64,") == 2 + 2  # dice + hd95 boxes, two curves
    # one folder is a run page; several need --out
    result = runner.invoke(app, ["report", str(full), str(unet)])
    assert result.exit_code == 2 and "--out" in result.output


def test_markdown_tables_become_html_tables() -> None:
    from transmed.evaluation.report import markdown_to_html

    html_text = markdown_to_html("# Title\n\nSome **bold** `code` <x>.\n\n| a | b |\n|---|---|\n"
                                 "| 1 | 2 |\n\n- one\n- two", level=2)  # fmt: skip
    assert html_text.splitlines() == [
        "<h2>Title</h2>",
        "<p>Some <b>bold</b> <code>code</code> &lt;x&gt;.</p>",
        "<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td><td>2</td>"
        "</tr></tbody></table>",
        "<ul><li>one</li><li>two</li></ul>",
    ]


def test_report_gives_each_case_a_working_viewer_command(evaluated_run: tuple[Path, Path]) -> None:
    """The ``transmed view`` command printed for a case opens that case with its images."""
    import shlex

    from transmed.viewer.sources import catalogue
    from transmed.viewer.volumes import load

    run, _ = evaluated_run
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    commands = re.findall(r"<code>(transmed view [^<]+)</code>", (run / "report.html").read_text())
    assert len(commands) == 3  # best, median, worst
    argv = shlex.split(html.unescape(commands[0]))
    path, images, case = argv[2], argv[argv.index("--images") + 1], argv[argv.index("--case") + 1]
    cat = catalogue(path, images=images)
    opened = load(cat.get(case))
    assert opened.case.prediction.name == f"{case}.nii.gz" and "t1ce" in opened.case.images
