"""``transmed compare`` on fake run folders with known per-case Dice and HD95."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from fake_runs import make_run, write_evaluation_csv
from scipy import stats
from typer.testing import CliRunner

from transmed.evaluation.cli_compare import compare_cmd
from transmed.evaluation.compare import compare, load_runs, select_reference
from transmed.evaluation.statistics import bootstrap_ci

app = typer.Typer()
app.command("compare")(compare_cmd)


@app.callback()
def _root() -> None:
    """Local stand-in for the ``transmed`` app (the lead registers compare_cmd there)."""


runner = CliRunner()
CASES = [f"BraTS2021_{i:05d}" for i in range(10)]


def _scores(seed: int, shift: float = 0.0, cases: list[str] = CASES) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {c: [float(v) for v in np.clip(rng.uniform(0.55, 0.9, 3) + shift, 0, 1)]
            for c in cases}


def test_table_values_and_p_values_equal_scipy(tmp_path: Path) -> None:
    base, full = _scores(1), _scores(2, shift=0.04)
    rng = np.random.default_rng(3)
    hd_base = {c: [float(v) for v in rng.uniform(2, 20, 3)] for c in CASES}
    # the reference ("unet") is given second: the default picks it by model name
    make_run(tmp_path / "full", "transmed_full", full)
    make_run(tmp_path / "base", "unet", base, hd95=hd_base, parameters=2_000_000)
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(tmp_path / "full"), str(tmp_path / "base"),
                                 "--out", str(out), "--bootstrap", "2000"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compare.json").read_text())
    assert report["reference"] == "unet"
    runs = {r["label"]: r for r in report["runs"]}
    for k, region in enumerate(("WT", "TC", "ET")):
        values = [full[c][k] for c in CASES]
        got = runs["transmed_full"]["summary"]["dice"][region]
        assert got["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert got["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert got["n"] == len(CASES)
    mean_per_case = {c: np.mean(v) for c, v in base.items()}
    assert runs["unet"]["summary"]["dice"]["mean"]["mean"] == pytest.approx(
        np.mean(list(mean_per_case.values())))
    assert runs["unet"]["parameters"] == 2_000_000
    assert runs["unet"]["latency_s_median"] == pytest.approx(0.6)
    (comp,) = report["comparisons"]
    assert comp["run"] == "transmed_full" and comp["n_shared"] == len(CASES)
    for metric, run_vals, ref_vals in (("dice", full, base), ("hd95", None, hd_base)):
        for k, region in enumerate(("WT", "TC", "ET")):
            if run_vals is None:  # fake_runs' default HD95: 10 (1 - Dice)
                a = np.array([10.0 * (1.0 - full[c][k]) for c in CASES])
            else:
                a = np.array([run_vals[c][k] for c in CASES])
            b = np.array([ref_vals[c][k] for c in CASES])
            test = comp["tests"][metric][region]
            assert test["n"] == len(CASES)
            assert test["mean_diff"] == pytest.approx(np.mean(a - b), abs=1e-12)  # run - ref
            assert test["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-9)
            assert test["ttest_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
            low, high = bootstrap_ci(a - b, n_resamples=2000, seed=0)
            assert (test["ci_low"], test["ci_high"]) == pytest.approx((low, high))
            assert test["ci_low"] <= test["mean_diff"] <= test["ci_high"]
    markdown = (out / "compare.md").read_text()
    wt_full = runs["transmed_full"]["summary"]["dice"]["WT"]
    assert f"{wt_full['mean']:.3f} ± {wt_full['sd']:.3f}" in markdown
    assert "| **unet** (ref) |" in markdown and "2.00 M" in markdown
    assert markdown.strip() in result.output  # the table is printed too
    for name in ("compare_dice.png", "compare_hd95.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_reference_selection(tmp_path: Path) -> None:
    for name, model in (("a", "transmed_full"), ("b", "transmed_a"), ("c", "transmed_full")):
        make_run(tmp_path / name, model, _scores(len(name)))
    runs = load_runs([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    # the same model twice: labels gain the folder name
    assert [r.label for r in runs] == ["transmed_full (a)", "transmed_a", "transmed_full (c)"]
    assert select_reference(runs) == 0  # no unet: the first folder
    assert select_reference(runs, "transmed_a") == 1
    assert select_reference(runs, "transmed_full (c)") == 2
    assert select_reference(runs, "2") == 2
    assert select_reference(runs, "c") == 2  # folder name
    assert select_reference(runs, str(tmp_path / "b")) == 1
    with pytest.raises(ValueError, match="several runs"):
        select_reference(runs, "transmed_full")
    with pytest.raises(ValueError, match="no such run"):
        select_reference(runs, "swinunetr")
    with pytest.raises(ValueError, match="only 3 runs"):
        select_reference(runs, "3")
    make_run(tmp_path / "u", "unet", _scores(9))
    runs = load_runs([tmp_path / "a", tmp_path / "b", tmp_path / "u"])
    assert select_reference(runs) == 2
    result, markdown, _ = compare([tmp_path / "a", tmp_path / "u"], reference="transmed_full",
                                  metrics=["dice"], n_resamples=200)
    assert result["reference"] == "transmed_full"
    assert [c["run"] for c in result["comparisons"]] == ["unet"]
    assert "## HD95" not in markdown  # only the metric asked for


def test_pairing_by_case_id_with_missing_and_failed_cases(tmp_path: Path) -> None:
    ref_scores = _scores(5)
    # lacks case 0, case 1 failed, has one the reference lacks; rows in another order
    run_scores = _scores(6, cases=list(reversed(CASES[2:] + ["BraTS2021_00099"])))
    make_run(tmp_path / "ref", "unet", ref_scores)
    make_run(tmp_path / "run", "segresnet", run_scores, failed=[CASES[1]])
    result, markdown, _ = compare([tmp_path / "ref", tmp_path / "run"], metrics=["dice"],
                                  n_resamples=500)
    (comp,) = result["comparisons"]
    shared = CASES[2:]  # case 1 failed in the run, case 0 missing from it
    assert comp["n_shared"] == len(shared)
    assert comp["only_in_run"] == ["BraTS2021_00099"]
    assert comp["only_in_reference"] == CASES[:2]
    a = np.array([run_scores[c][0] for c in shared])
    b = np.array([ref_scores[c][0] for c in shared])
    wt = comp["tests"]["dice"]["WT"]
    assert wt["n"] == len(shared)
    assert wt["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-9)
    assert wt["ttest_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
    run_summary = result["runs"][1]
    assert run_summary["failed"] == [CASES[1]] and run_summary["n_cases"] == len(run_scores)
    assert "Unpaired cases" in markdown and "1 case(s) only in this run" in markdown


def test_runs_without_shared_cases_are_refused(tmp_path: Path) -> None:
    make_run(tmp_path / "a", "unet", _scores(1, cases=CASES[:5]))
    make_run(tmp_path / "b", "transmed_full", _scores(2, cases=CASES[5:]))
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "share no evaluated case" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_folder_without_evaluation_csv(tmp_path: Path) -> None:
    make_run(tmp_path / "good", "unet", _scores(1))
    empty = tmp_path / "not_evaluated"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model": "transmed_full"}))
    result = runner.invoke(app, ["compare", str(tmp_path / "good"), str(empty)])
    assert result.exit_code == 2
    assert f"{empty}: no evaluation.csv" in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, no traceback


@pytest.mark.parametrize(
    ("content", "message"),
    [("case,region,dice\nx,WT,0.5\n", "missing columns"),
     ("case,region,dice,hd95,sensitivity,specificity,error\nx,XX,1,0,1,1,\n", "unknown region"),
     ("case,region,dice,hd95,sensitivity,specificity,error\nx,WT,abc,0,1,1,\n", "not a number")],
)
def test_bad_evaluation_csv(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "evaluation.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_runs([tmp_path / "run"])


def test_metric_option_checked(tmp_path: Path) -> None:
    make_run(tmp_path / "a", "unet", _scores(1))
    with pytest.raises(ValueError, match="has no lesion_dice column"):
        compare([tmp_path / "a"], metrics=["lesion_dice"])
    with pytest.raises(ValueError, match="expected one of"):
        compare([tmp_path / "a"], metrics=["accuracy"])
    with pytest.raises(ValueError, match="given twice"):
        compare([tmp_path / "a", tmp_path / "a"])
    write_evaluation_csv(tmp_path / "b" / "evaluation.csv", {})  # header only
    with pytest.raises(ValueError, match="no evaluated case"):
        compare([tmp_path / "b"])


def test_identical_runs_give_p_one_and_a_note(tmp_path: Path) -> None:
    scores = _scores(4)
    make_run(tmp_path / "a", "unet", scores)
    make_run(tmp_path / "b", "transmed_full", scores)
    result, markdown, _ = compare([tmp_path / "b", tmp_path / "a"], metrics=["dice"],
                                  n_resamples=100)
    wt = result["comparisons"][0]["tests"]["dice"]["WT"]
    assert (wt["mean_diff"], wt["wilcoxon_p"], wt["ttest_p"]) == (0.0, 1.0, 1.0)
    assert "- all differences are zero: transmed_full dice WT" in markdown
