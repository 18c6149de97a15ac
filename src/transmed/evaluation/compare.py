"""Compare training runs on the same cases: the ablation table with paired statistics.

``transmed compare RUN_OR_CV_DIR ...`` reads each folder's ``evaluation.csv`` (the per-case
output of :func:`transmed.evaluation.evaluate.write_report`, written by ``transmed train`` /
``transmed cv`` after training), ``config.json`` (the model name) and ``inference.json``
(parameters, per-case latency), and reports:

- per run, metric and region (WT, TC, ET and ``mean``, the per-case mean over the three regions):
  mean ± sd, median and n over **all** the run's evaluated cases;
- per run against the reference run, paired by case id over the cases **both** runs evaluated:
  the mean difference ``run - reference`` with its 95% percentile-bootstrap CI, the two-sided
  Wilcoxon signed-rank and paired t-test p-values (:func:`transmed.evaluation.statistics.
  paired_tests`) and n. For Dice, sensitivity and specificity a positive difference means the
  run is better; for HD95 (mm) a negative one does.

Reference run (:func:`select_reference`): the one named by ``--reference``, else the first run
whose model is ``unet`` (the baseline of the ablation, so every row reads "gain over a plain
U-Net"), else the first folder given.

Run labels are the model names from ``config.json``; when two runs have the same model the
folder name is added (``transmed_full (fold_a)``).

Rows of ``evaluation.csv`` with an ``error`` are counted as failed; those scored as the worst
case (``worst_case`` = 1: a missing or failed prediction) keep their worst-case values in every
mean and paired test, as in ``transmed evaluate``; the others (an unusable reference, or a CSV
written before worst-case scoring) are left out.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transmed.data.labels import REGIONS
from transmed.evaluation.metrics import METRICS
from transmed.io.atomic import atomic_write_bytes

#: Regions of every table: the three BraTS regions and their per-case mean.
SUMMARY_REGIONS: tuple[str, ...] = (*REGIONS, "mean")
#: Lesion-wise metrics compared when every run has them (BraTS 2023).
LESION_COLUMNS: tuple[str, ...] = ("lesion_dice", "lesion_hd95")
#: Display names; metrics in ``_MM`` are distances in mm (lower is better, 2 decimals).
METRIC_NAMES: dict[str, str] = {
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "lesion_dice": "Lesion-wise Dice",
    "lesion_hd95": "Lesion-wise HD95 (mm)",
}
_MM = {"hd95", "lesion_hd95"}
#: Box plots written by :func:`write_comparison` for these metrics when compared.
PLOTTED_METRICS: tuple[str, ...] = ("dice", "hd95")


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def find_evaluation_csv(folder: Path) -> Path:
    """The per-case CSV of a run or CV folder: ``evaluation.csv`` (or ``evaluation/metrics.csv``
    where ``transmed evaluate --out FOLDER/evaluation`` was given an existing folder).

    Raises:
        ValueError: the folder does not exist or holds neither file.
    """
    from transmed.evaluation.evaluate import output_paths

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (expected a run or cross-validation folder)")
    for candidate in (folder / "evaluation.csv", output_paths(folder / "evaluation")[0]):
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"{folder}: no evaluation.csv (a finished `transmed train`/`transmed cv` writes it; or "
        f"run `transmed evaluate --pred {folder / 'predictions'} --ref DATA "
        f"--out {folder / 'evaluation'}`)"
    )


def _number(text: str, path: Path, case: str, column: str) -> float:
    if text is None or text.strip() == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: case {case}, column {column}: not a number: {text!r}") from None
    if math.isinf(value):
        raise ValueError(f"{path}: case {case}, column {column}: infinite value")
    return value


def read_evaluation_csv(
    path: Path,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str], tuple[str, ...]]:
    """Parse an evaluation CSV (one row per case × region).

    Returns:
        ``(values, failed, metrics)``: ``values[metric][region][case]`` (NaN for an empty
        cell), with the ``mean`` region added (per case mean over WT, TC, ET; NaN unless all
        three are finite); ``failed[case]`` = the error of cases that were not evaluated; the
        metric columns found (:data:`METRICS` and lesion-wise ones present).

    Raises:
        ValueError: naming the file for a missing column, an unknown region or a bad number.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("case", "region", *METRICS) if c not in header]
        if missing:
            raise ValueError(f"{path}: not an evaluation CSV (missing columns {missing})")
        metrics = (*METRICS, *(c for c in LESION_COLUMNS if c in header))
        values: dict[str, dict[str, dict[str, float]]] = {
            m: {r: {} for r in SUMMARY_REGIONS} for m in metrics
        }
        failed: dict[str, str] = {}
        for row in reader:
            case, region = row["case"], row["region"]
            if region not in REGIONS:
                raise ValueError(f"{path}: case {case}: unknown region {region!r}")
            if (row.get("error") or "").strip():
                failed[case] = row["error"].strip()
                if (row.get("worst_case") or "").strip() != "1":
                    continue  # nothing to score against: left out
            for m in metrics:
                values[m][region][case] = _number(row[m], path, case, m)
    for cases in values.values():
        for case in set(cases["WT"]) & set(cases["TC"]) & set(cases["ET"]):
            three = [cases[r][case] for r in REGIONS]
            cases["mean"][case] = float(np.mean(three)) if all(map(math.isfinite, three)) \
                else math.nan
    return values, failed, metrics


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def run_kind(folder: Path) -> str:
    """``"cv"`` for a cross-validation folder (``splits.json`` or ``fold_*/``), else ``"run"``."""
    folder = Path(folder)
    if (folder / "splits.json").is_file() or any(folder.glob("fold_*/metrics.csv")):
        return "cv"
    return "run"


@dataclass
class RunResults:
    """One run or CV folder's per-case metrics, config and inference record."""

    folder: Path
    model: str
    kind: str  # "run" or "cv"
    values: dict[str, dict[str, dict[str, float]]]  # metric -> region -> case -> value
    metrics: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def cases(self) -> list[str]:
        """Case ids with metrics (worst-case scored failures included), sorted."""
        return sorted(set().union(*(self.values[m][r] for m in self.metrics for r in REGIONS)))

    @property
    def parameters(self) -> int | None:
        value = self.inference.get("parameters")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def latency_s_median(self) -> float | None:
        """Median per-case inference time (s) from ``inference.json``."""
        value = self.inference.get("latency_s_median")
        if isinstance(value, (int, float)):
            return float(value)
        latencies = self.inference.get("latency_s")
        if isinstance(latencies, list) and latencies:
            return float(np.median(np.asarray(latencies, dtype=np.float64)))
        return None

    def summary(self, metric: str, region: str) -> dict[str, float | int | None]:
        """``{mean, sd, median, n}`` of one metric and region over the run's cases."""
        from transmed.evaluation.statistics import summarise

        return summarise(list(self.values[metric][region].values())).as_dict()


def load_run(folder: str | Path) -> RunResults:
    """Read a run or CV folder (see the module doc); ValueError naming the folder if unusable."""
    folder = Path(folder)
    csv_path = find_evaluation_csv(folder)
    values, failed, metrics = read_evaluation_csv(csv_path)
    config = _read_json(folder / "config.json")
    inference = _read_json(folder / "inference.json")
    model = str(config.get("model") or inference.get("model") or folder.name)
    run = RunResults(folder=folder, model=model, kind=run_kind(folder), values=values,
                     metrics=metrics, failed=failed, config=config, inference=inference,
                     label=model)  # fmt: skip
    if not run.cases:
        raise ValueError(f"{csv_path}: no evaluated case (every row is empty or failed)")
    return run


def label_runs(runs: Sequence[RunResults]) -> None:
    """Set each run's ``label``: its model, plus the folder name where models repeat."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.model] = counts.get(run.model, 0) + 1
    for run in runs:
        run.label = run.model if counts[run.model] == 1 else f"{run.model} ({run.folder.name})"
    seen: dict[str, int] = {}
    for run in runs:  # same model and same folder name (runs/a/x vs runs/b/x): number them
        seen[run.label] = seen.get(run.label, 0) + 1
    taken: dict[str, int] = {}
    for run in runs:
        if seen[run.label] > 1:
            taken[run.label] = taken.get(run.label, 0) + 1
            run.label = f"{run.label} #{taken[run.label]}"


def load_runs(folders: Sequence[str | Path]) -> list[RunResults]:
    """:func:`load_run` each folder and label them; ValueError for no folder or a repeat."""
    if not folders:
        raise ValueError("no run folder given")
    resolved = [Path(f).resolve() for f in folders]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise ValueError(f"{folders[i]}: given twice")
    runs = [load_run(f) for f in folders]
    label_runs(runs)
    return runs


def select_reference(runs: Sequence[RunResults], reference: str | None = None) -> int:
    """Index of the reference run.

    ``reference`` may be a run label, a folder (path or name), a model name that only one run
    has, or a 0-based position in ``runs``. None: the first run whose model is ``unet``, else 0.

    Raises:
        ValueError: listing the labels when ``reference`` matches no run or several.
    """
    if reference is None:
        return next((i for i, r in enumerate(runs) if r.model == "unet"), 0)
    labels = [r.label for r in runs]
    if reference in labels:
        return labels.index(reference)
    if reference.isdigit():
        index = int(reference)
        if index >= len(runs):
            raise ValueError(f"--reference {reference}: only {len(runs)} runs (0-based index)")
        return index
    target = Path(reference).resolve() if Path(reference).exists() else None
    for matches in (
        [i for i, r in enumerate(runs) if r.folder.resolve() == target],
        [i for i, r in enumerate(runs) if r.folder.name == reference],
        [i for i, r in enumerate(runs) if r.model == reference],
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValueError(
                f"--reference {reference!r} matches several runs "
                f"({[labels[i] for i in matches]}); give a label from {labels}"
            )
    raise ValueError(
        f"--reference {reference!r}: no such run; give a label from {labels}, a folder or a "
        f"0-based index"
    )


def check_metrics(runs: Sequence[RunResults], metrics: Sequence[str] | None) -> tuple[str, ...]:
    """The metrics to compare: those asked for (each must be in every run's CSV), or by default
    :data:`METRICS` plus the lesion-wise ones every run has."""
    if not metrics:
        return tuple(m for m in (*METRICS, *LESION_COLUMNS) if all(m in r.metrics for r in runs))
    known = (*METRICS, *LESION_COLUMNS)
    for m in metrics:
        if m not in known:
            raise ValueError(f"--metric {m!r}: expected one of {list(known)}")
        for run in runs:
            if m not in run.metrics:
                raise ValueError(f"--metric {m}: {find_evaluation_csv(run.folder)} has no {m} "
                                 f"column (run `transmed evaluate` with --lesionwise)")
    return tuple(dict.fromkeys(metrics))


def shared_cases(run: RunResults, reference: RunResults) -> list[str]:
    """Case ids both runs evaluated, sorted; ValueError naming both folders if there are none."""
    cases = sorted(set(run.cases) & set(reference.cases))
    if not cases:
        raise ValueError(
            f"runs {run.label} ({run.folder}) and {reference.label} ({reference.folder}) share "
            f"no evaluated case: nothing to pair (were they evaluated on different cases?)"
        )
    return cases


def compare_pair(
    run: RunResults,
    reference: RunResults,
    metrics: Sequence[str],
    *,
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired statistics of ``run - reference`` for each metric and region (JSON-ready).

    Returns:
        ``{"run", "reference", "n_shared", "only_in_run", "only_in_reference",
        "tests": {metric: {region: paired_tests(...)}}}``; each test's ``n`` counts the pairs
        with both values finite.
    """
    from transmed.evaluation.statistics import paired_tests

    cases = shared_cases(run, reference)
    tests: dict[str, dict[str, Any]] = {}
    for m in metrics:
        tests[m] = {}
        for region in SUMMARY_REGIONS:
            a = [run.values[m][region].get(c, math.nan) for c in cases]
            b = [reference.values[m][region].get(c, math.nan) for c in cases]
            tests[m][region] = paired_tests(a, b, n_resamples=n_resamples, seed=seed)
    return {
        "run": run.label,
        "reference": reference.label,
        "n_shared": len(cases),
        "only_in_run": sorted(set(run.cases) - set(reference.cases)),
        "only_in_reference": sorted(set(reference.cases) - set(run.cases)),
        "tests": tests,
    }


def compare_runs(
    runs: Sequence[RunResults],
    reference: int,
    metrics: Sequence[str],
    *,
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole comparison as a JSON-ready dict (NaN kept as float; see :func:`json_safe`)."""
    ref = runs[reference]
    return {
        "reference": ref.label,
        "difference": "run - reference, paired by case id",
        "metrics": list(metrics),
        "regions": list(SUMMARY_REGIONS),
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "confidence": 0.95,
                      "method": "percentile"},
        "runs": [
            {
                "label": r.label,
                "model": r.model,
                "folder": str(r.folder),
                "kind": r.kind,
                "n_cases": len(r.cases),
                "failed": sorted(r.failed),
                "parameters": r.parameters,
                "latency_s_median": r.latency_s_median,
                "device": r.inference.get("device"),
                "summary": {m: {reg: r.summary(m, reg) for reg in SUMMARY_REGIONS}
                            for m in metrics},
            }
            for r in runs
        ],
        "comparisons": [
            compare_pair(r, ref, metrics, n_resamples=n_resamples, seed=seed)
            for i, r in enumerate(runs) if i != reference
        ],
    }


def _fmt(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    digits = 2 if metric in _MM else 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_p(p: float | None) -> str:
    """p-value for a table: 3 decimals, scientific below 0.001, ``–`` for none."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def format_mean_sd(stats: dict[str, Any], metric: str) -> str:
    """``mean ± sd`` (sd left out when undefined), ``–`` when there is no value."""
    mean, sd = stats.get("mean"), stats.get("sd")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return _fmt(mean, metric)
    return f"{_fmt(mean, metric)} ± {_fmt(sd, metric)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison (from :func:`compare_runs`) as Markdown tables."""
    ref = result["reference"]
    boot = result["bootstrap"]
    lines = [
        f"# Comparison of {len(result['runs'])} runs",
        "",
        f"Reference: **{ref}**. Accuracy: mean ± sd over each run's evaluated cases; `mean` is "
        f"the per-case mean over WT, TC and ET. Differences: run − reference, paired by case "
        f"id (n = cases both runs evaluated), with a {boot['confidence']:.0%} percentile-"
        f"bootstrap CI ({boot['n_resamples']} resamples, seed {boot['seed']}); p: two-sided "
        f"Wilcoxon signed-rank / paired t-test. Higher is better except for HD95.",
        "",
        "## Runs",
        "",
    ]
    rows = []
    for r in result["runs"]:
        params = f"{r['parameters'] / 1e6:.2f} M" if r["parameters"] is not None else "–"
        latency = f"{r['latency_s_median']:.3f}" if r["latency_s_median"] is not None else "–"
        name = f"**{r['label']}** (ref)" if r["label"] == ref else r["label"]
        rows.append([name, r["model"], r["kind"], f"`{r['folder']}`", str(r["n_cases"]),
                     str(len(r["failed"])), params, latency, str(r.get("device") or "–")])
    lines += _table(["run", "model", "kind", "folder", "cases", "failed", "parameters",
                     "latency median (s)", "device"], rows)
    for m in result["metrics"]:
        lines += ["", f"## {METRIC_NAMES.get(m, m)}", ""]
        rows = [[r["label"] + (" (ref)" if r["label"] == ref else ""),
                 *(format_mean_sd(r["summary"][m][reg], m) for reg in result["regions"]),
                 str(r["summary"][m]["mean"]["n"])]
                for r in result["runs"]]
        lines += _table(["run", *result["regions"], "n"], rows)
        if not result["comparisons"]:
            continue
        lines += ["", f"{METRIC_NAMES.get(m, m)}: run − {ref}, paired by case", ""]
        rows = []
        for comp in result["comparisons"]:
            for reg in result["regions"]:
                t = comp["tests"][m][reg]
                rows.append([comp["run"], reg, str(t["n"]), _fmt(t["mean_diff"], m, True),
                             f"[{_fmt(t['ci_low'], m, True)}, {_fmt(t['ci_high'], m, True)}]",
                             format_p(t["wilcoxon_p"]), format_p(t["ttest_p"])])
        lines += _table(["run", "region", "n", "Δ mean", "95% CI", "p Wilcoxon", "p t-test"],
                        rows)
    notes: dict[str, list[str]] = {}  # note -> "run: metric region" it applies to
    for comp in result["comparisons"]:
        for m, by_region in comp["tests"].items():
            for reg, t in by_region.items():
                for note in t.get("notes", []):
                    notes.setdefault(note, []).append(f"{comp['run']} {m} {reg}")
    if notes:
        lines += ["", "## Notes on the tests", ""]
        lines += [f"- {note}: {', '.join(where)}" for note, where in notes.items()]
    unpaired = [c for c in result["comparisons"] if c["only_in_run"] or c["only_in_reference"]]
    if unpaired:
        lines += ["", "## Unpaired cases", ""]
        for c in unpaired:
            lines.append(f"- {c['run']}: {len(c['only_in_run'])} case(s) only in this run, "
                         f"{len(c['only_in_reference'])} only in {ref}; left out of the tests")
    return "\n".join(lines) + "\n"


def box_plot_values(
    runs: Sequence[RunResults], metric: str
) -> dict[str, dict[str, list[float]]]:
    """``{region: {run label: finite per-case values}}`` for a box plot."""
    return {
        region: {r.label: [v for v in r.values[metric][region].values() if math.isfinite(v)]
                 for r in runs}
        for region in SUMMARY_REGIONS
    }


def write_comparison(
    result: dict[str, Any], runs: Sequence[RunResults], out: str | Path
) -> list[Path]:
    """Write ``compare.md``, ``compare.json`` and ``compare_{dice,hd95}.png`` (when those
    metrics are compared) into ``out``, each atomically. Returns the paths written."""
    from transmed.evaluation.figures import box_plots

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    # Everything is rendered before the first write, so a failure leaves no partial set.
    contents = {
        "compare.md": comparison_markdown(result).encode("utf-8"),
        "compare.json": (json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"
                         ).encode("utf-8"),
    }
    for m in PLOTTED_METRICS:
        if m in result["metrics"]:
            contents[f"compare_{m}.png"] = box_plots(
                box_plot_values(runs, m), METRIC_NAMES[m], reference=result["reference"])
    return [atomic_write_bytes(out / name, data) for name, data in contents.items()]


def compare(
    folders: Sequence[str | Path],
    *,
    reference: str | None = None,
    metrics: Sequence[str] | None = None,
    out: str | Path | None = None,
    n_resamples: int = 10000,
    seed: int = 0,
) -> tuple[dict[str, Any], str, list[Path]]:
    """Load, compare and (when ``out`` is given) write; returns ``(result, markdown, paths)``."""
    runs = load_runs(folders)
    ref = select_reference(runs, reference)
    chosen = check_metrics(runs, metrics)
    result = compare_runs(runs, ref, chosen, n_resamples=n_resamples, seed=seed)
    paths = write_comparison(result, runs, out) if out is not None else []
    return result, comparison_markdown(result), paths
