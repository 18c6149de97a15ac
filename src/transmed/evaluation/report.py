"""One self-contained HTML page per training run or cross-validation (``transmed report``),
or per study of several runs (``transmed report RUN1 RUN2 ...``, the demo's ``report.html``):
the comparison first (runs, accuracy tables, paired tests, box plots, as ``transmed compare``
computes them), then every run's own sections.

A run's page holds, with every image embedded as a base64 PNG and the CSS inline (no external
file or URL, so it can be mailed or archived as is):

1. the run: model, kind, parameters, median inference latency (``inference.json``);
2. training curves from ``metrics.csv`` (a CV draws one line per fold from
   ``fold_k/metrics.csv``);
3. the metrics table from ``evaluation.csv``: per region, mean ± sd and median of each metric;
4. the best, median and worst case by the per-case mean Dice over WT, TC and ET, each as a
   three-plane overlay (axial, coronal, sagittal through the reference tumour's centre of mass)
   of the reference and the prediction over FLAIR (else T1ce, else any modality on the
   prediction's grid);
5. the run's ``config.json``.

The overlays read the case's images and reference label from the dataset named by
``config.json``'s ``"data"`` (a raw dataset, or a preprocessed folder whose ``dataset.json``
names its ``"source"``) and the prediction from ``predictions/`` (a run) or ``oof/`` (a CV),
written in the dataset layout's own label values. When any of that cannot be found the page
still renders, with a note saying why in place of the overlays.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transmed.data.labels import REGIONS
from transmed.evaluation.compare import (
    METRIC_NAMES,
    SUMMARY_REGIONS,
    RunResults,
    format_mean_sd,
    load_run,
)
from transmed.io.atomic import atomic_write_bytes

#: Background modalities of the overlays, in order of preference.
BACKGROUND_MODALITIES: tuple[str, ...] = ("flair", "t1ce", "t2", "t1")


def read_training_log(path: Path) -> list[dict[str, float]]:
    """Rows of a trainer ``metrics.csv`` as floats (NaN for empty cells such as validation Dice
    on epochs without validation)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for key, text in row.items():
                try:
                    parsed[key] = float(text) if text not in (None, "") else math.nan
                except ValueError:
                    parsed[key] = math.nan
            rows.append(parsed)
    return rows


def training_logs(folder: Path) -> dict[str, list[dict[str, float]]]:
    """``{name: rows}``: ``{"run": ...}`` for a run, ``{"fold_0": ..., ...}`` for a CV folder;
    empty when no ``metrics.csv`` is found."""
    folder = Path(folder)
    folds = sorted(folder.glob("fold_*/metrics.csv"),
                   key=lambda p: (len(p.parent.name), p.parent.name))
    if folds:
        return {p.parent.name: read_training_log(p) for p in folds}
    if (folder / "metrics.csv").is_file():
        return {"run": read_training_log(folder / "metrics.csv")}
    return {}


def pick_cases(run: RunResults) -> dict[str, list[str]]:
    """``{case_id: ["best"/"median"/"worst", ...]}`` by the per-case mean Dice over WT, TC, ET.

    Cases are sorted by (mean Dice, case id); worst = first, best = last, median = the
    ``(n - 1) // 2``-th. With fewer than three cases one case carries several tags.
    """
    scores = {c: v for c, v in run.values["dice"]["mean"].items() if math.isfinite(v)}
    ranked = sorted(scores, key=lambda c: (scores[c], c))
    picked: dict[str, list[str]] = {}
    if not ranked:
        return picked
    for tag, case in (("best", ranked[-1]), ("median", ranked[(len(ranked) - 1) // 2]),
                      ("worst", ranked[0])):
        picked.setdefault(case, []).append(tag)
    return picked


def dataset_folder(config: dict[str, Any], override: str | Path | None = None) -> Path:
    """The raw dataset of a run: ``override``, else ``config["data"]``; a preprocessed folder
    (``dataset.json`` with ``"kind": "preprocessed"``) is followed to its ``"source"``.

    Raises:
        ValueError: no data folder named, or the folder does not exist.
    """
    if override is not None:
        folder = Path(override)
    elif config.get("data"):
        folder = Path(str(config["data"]))
    else:
        raise ValueError("config.json names no dataset (\"data\"); pass --data")
    if not folder.is_dir():
        raise ValueError(f"dataset folder {folder} not found (pass --data if it moved)")
    meta_path = folder / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{meta_path}: cannot read ({exc})") from None
        if isinstance(meta, dict) and meta.get("kind") in ("preprocessed", "augmented"):
            return dataset_folder({"data": meta.get("source")})
    return folder


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``(X, Y, Z)`` array reordered/flipped to the closest RAS voxel order, and its spacing
    (mm) along the new axes (nibabel's orientation tools; no resampling)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    ras_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        ras_spacing[int(target)] = float(spacing[axis])
    out = nib.orientations.apply_orientation(data, ornt)
    return np.ascontiguousarray(out), (ras_spacing[0], ras_spacing[1], ras_spacing[2])


def tumour_centre(*label_maps: np.ndarray) -> tuple[int, int, int]:
    """Voxel centre of mass of the first map with any tumour; the array centre otherwise."""
    for labels in label_maps:
        idx = np.argwhere(labels > 0)
        if idx.size:
            return tuple(int(round(v)) for v in idx.mean(axis=0))  # type: ignore[return-value]
    return tuple(int(s) // 2 for s in label_maps[0].shape)  # type: ignore[return-value]


@dataclass
class CaseFigure:
    """One picked case: its tags, Dice per region, and the overlay PNG or why there is none."""

    case_id: str
    tags: list[str]
    dice: dict[str, float]
    png: bytes | None = None
    note: str = ""


class _Dataset:
    """The run's dataset index, read once and only when an overlay needs it."""

    def __init__(self, folder: Path) -> None:
        from transmed.data.layouts import index_dataset

        self.index = index_dataset(folder)
        self.cases = {c.case_id: c for c in self.index.cases}


def overlay_case(dataset: _Dataset, case_id: str, prediction: Path, title: str) -> bytes:
    """Overlay PNG of one case (see :func:`transmed.evaluation.figures.case_overlay`).

    Raises:
        ValueError: the case, its label, the prediction or an image on its grid is missing.
    """
    from transmed.data.labels import get_convention, to_internal
    from transmed.data.layouts import load_case
    from transmed.evaluation.figures import case_overlay
    from transmed.io.nifti import load_volume

    case = dataset.cases.get(case_id)
    if case is None:
        raise ValueError(f"case {case_id} is not in the dataset {dataset.index.root}")
    if not prediction.is_file():
        raise ValueError(f"no prediction file {prediction}")
    volumes = load_case(case)
    if volumes.label is None:
        raise ValueError(f"case {case_id} has no reference label in {dataset.index.root}")
    pred = load_volume(prediction, dtype=np.int32)
    # write_prediction writes the layout's default values, so read them back the same way.
    pred_labels = to_internal(pred.data, get_convention(dataset.index.layout), source=prediction)
    if volumes.label.shape3d != pred.shape3d:
        raise ValueError(f"prediction {prediction} has shape {pred.shape3d} but the reference "
                         f"label has {volumes.label.shape3d}")
    on_grid = [m for m in BACKGROUND_MODALITIES
               if m in volumes.images and volumes.images[m].shape3d == pred.shape3d]
    if not on_grid:
        raise ValueError(f"no image of case {case_id} on the prediction's grid {pred.shape3d}")
    background = volumes.images[on_grid[0]]
    image, spacing = to_ras(background.data, background.affine)
    ref_ras, _ = to_ras(volumes.label.data, volumes.label.affine)
    pred_ras, _ = to_ras(pred_labels, pred.affine)
    centre = tumour_centre(ref_ras, pred_ras)
    return case_overlay(image, ref_ras, pred_ras, spacing, centre, title=title,
                        image_name=on_grid[0])


def case_figures(
    run: RunResults, data: str | Path | None = None
) -> tuple[list[CaseFigure], str]:
    """The best, median and worst cases with overlays where possible.

    Returns:
        ``(figures, note)``: ``note`` says why no overlay could be drawn at all (no dataset),
        else is empty; a single case's problem goes in its own ``CaseFigure.note``.
    """
    picked = pick_cases(run)
    mean_dice = run.values["dice"]["mean"]
    figures = [CaseFigure(c, tags, {r: run.values["dice"][r].get(c, math.nan) for r in REGIONS})
               for c, tags in sorted(picked.items(), key=lambda kv: -mean_dice[kv[0]])]
    if not figures:
        return figures, "no case with a finite Dice to show"
    try:
        dataset = _Dataset(dataset_folder(run.config, data))
    except ValueError as exc:
        return figures, f"Case images unavailable: {exc}"
    pred_dir = run.folder / ("oof" if run.kind == "cv" else "predictions")
    for fig in figures:
        dice = " / ".join(f"{r} {fig.dice[r]:.3f}" for r in REGIONS)
        title = f"{', '.join(fig.tags)}: {fig.case_id} — Dice {dice}"
        try:
            fig.png = overlay_case(dataset, fig.case_id, pred_dir / f"{fig.case_id}.nii.gz",
                                   title)
        except ValueError as exc:
            fig.note = str(exc)
    return figures, ""


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
.median { color: #666; font-size: 0.85em; }
.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.meta td { text-align: left; }
"""


def view_command(run: RunResults, case_id: str, data: str | Path | None = None) -> str:
    """The ``transmed view`` command that opens ``case_id``'s prediction with its images."""
    import shlex

    pred_dir = run.folder / ("oof" if run.kind == "cv" else "predictions")
    cmd = ["transmed", "view", str(pred_dir)]
    try:
        cmd += ["--images", str(dataset_folder(run.config, data))]
    except ValueError:  # dataset unknown: the command still lists the predictions
        pass
    return shlex.join([*cmd, "--case", case_id])


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def metrics_table_html(run: RunResults) -> str:
    """HTML table: a row per metric, a column per region, cells ``mean ± sd`` and median."""
    head = "".join(f"<th>{r}</th>" for r in SUMMARY_REGIONS)
    rows = []
    for m in run.metrics:
        cells = []
        for region in SUMMARY_REGIONS:
            stats = run.summary(m, region)
            median = stats["median"]
            med = "–" if median is None else (f"{median:.2f}" if "hd95" in m else f"{median:.3f}")
            cells.append(f"<td>{html.escape(format_mean_sd(stats, m))}<br>"
                         f"<span class=\"median\">median {med}</span></td>")
        rows.append(f"<tr><td>{html.escape(METRIC_NAMES.get(m, m))}</td>{''.join(cells)}</tr>")
    n = len(run.cases)
    return (f"<table><thead><tr><th>metric (n = {n} cases)</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _page(title: str, body: list[str]) -> str:
    head = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>"]
    return "\n".join([*head, *body, "</body></html>"]) + "\n"


def build_report(folder: str | Path, *, data: str | Path | None = None) -> str:
    """The HTML page of a run or CV folder (see the module doc).

    Raises:
        ValueError: the folder has no usable ``evaluation.csv``.
    """
    run = load_run(folder)
    title = f"TransMed report: {run.model} ({run.folder.name})"
    return _page(title, run_sections(run, data))


def run_sections(run: RunResults, data: str | Path | None = None, level: int = 1) -> list[str]:
    """One run's HTML: heading (``<h{level}>``), meta table, curves, metrics, cases, config."""
    from transmed.evaluation.figures import training_curves

    esc = html.escape
    h1, h2, h3 = (f"h{min(level + i, 6)}" for i in range(3))
    kind = "cross-validation" if run.kind == "cv" else "training run"
    params = f"{run.parameters:,}" if run.parameters is not None else "–"
    latency = f"{run.latency_s_median:.3f} s" if run.latency_s_median is not None else "–"
    meta = [("folder", str(run.folder)), ("model", run.model), ("kind", kind),
            ("evaluated cases", str(len(run.cases))),
            ("failed cases", ", ".join(sorted(run.failed)) or "none"),
            ("parameters", params), ("median inference latency per case", latency),
            ("inference device", str(run.inference.get("device", "–")))]
    parts = [
        f"<{h1}>{esc(run.model)} — {esc(kind)}</{h1}>",
        '<table class="meta"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in meta)
        + "</tbody></table>",
        f"<{h2}>Training curves</{h2}>",
    ]
    logs = training_logs(run.folder)
    if logs:
        parts.append(_img(training_curves(logs), "training loss and validation Dice per epoch"))
    else:
        parts.append('<p class="note">No metrics.csv found: no training curves.</p>')
    parts += [
        f"<{h2}>Metrics</{h2}>",
        "<p>Per region over the evaluated cases: mean ± sd (sample) and median; "
        "<code>mean</code> is the per-case mean over WT, TC and ET. HD95 in mm.</p>",
        metrics_table_html(run),
        f"<{h2}>Best, median and worst cases</{h2}>",
        "<p>Ranked by the per-case mean Dice over WT, TC and ET. Top row: reference, bottom "
        "row: prediction (red core, green oedema, yellow enhancing); white outline: reference "
        "whole tumour, cyan dashed: predicted whole tumour. Neurological view (patient's right "
        "on the right).</p>",
    ]
    figures, note = case_figures(run, data)
    if note:
        parts.append(f'<p class="note">{esc(note)}</p>')
    for fig in figures:
        dice = ", ".join(f"{r} {fig.dice[r]:.3f}" for r in REGIONS)
        parts.append(f"<{h3}>{esc(' / '.join(fig.tags))}: {esc(fig.case_id)}</{h3}>"
                     f"<p>Dice {esc(dice)}</p>")
        if fig.png is not None:
            parts.append(_img(fig.png, f"overlay of {fig.case_id}"))
        elif fig.note:
            parts.append(f'<p class="note">No overlay: {esc(fig.note)}</p>')
        parts.append(f"<p>Review and correct it: <code>{esc(view_command(run, fig.case_id, data))}"
                     "</code></p>")  # fmt: skip
    config = json.dumps(run.config, indent=2, sort_keys=False) if run.config else "(no config.json)"
    parts += [f"<{h2}>Configuration</{h2}>", f"<pre>{esc(config)}</pre>"]
    return parts


def _inline(text: str) -> str:
    """Escaped text with Markdown's ``**bold**`` and ```code``` (all the comparison uses)."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def markdown_to_html(markdown: str, level: int = 2) -> str:
    """The Markdown that :func:`~transmed.evaluation.compare.comparison_markdown` writes
    (headings, pipe tables, ``-`` lists, paragraphs) as HTML; ``#`` becomes ``<h{level}>``."""
    out: list[str] = []
    blocks = [b for b in markdown.strip().split("\n\n") if b.strip()]
    for block in blocks:
        lines = block.strip().splitlines()
        if lines[0].startswith("#"):
            depth = len(lines[0]) - len(lines[0].lstrip("#"))
            tag = f"h{min(level + depth - 1, 6)}"
            out.append(f"<{tag}>{_inline(lines[0].lstrip('#').strip())}</{tag}>")
        elif lines[0].startswith("|"):
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                           for r in rows[2:])  # rows[1] is the |---| separator
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif lines[0].startswith("- "):
            items = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


def build_study_report(
    folders: list[str | Path] | tuple[str | Path, ...], *, reference: str | None = None,
    data: str | Path | None = None, n_resamples: int = 10000, seed: int = 0,
) -> str:  # fmt: skip
    """One page for several runs (the demo's study): the comparison (``transmed compare``'s
    tables, paired tests and box plots) first, then every run's sections.

    Raises:
        ValueError: fewer than two folders, or one without a usable ``evaluation.csv``.
    """
    from transmed.evaluation.compare import (
        METRIC_NAMES,
        PLOTTED_METRICS,
        box_plot_values,
        check_metrics,
        compare_runs,
        comparison_markdown,
        load_runs,
        select_reference,
    )
    from transmed.evaluation.figures import box_plots

    if len(folders) < 2:
        raise ValueError("a study report needs at least two run folders (one: a run report)")
    runs = load_runs(folders)
    ref = select_reference(runs, reference)
    result = compare_runs(runs, ref, check_metrics(runs, None), n_resamples=n_resamples,
                          seed=seed)  # fmt: skip
    models = ", ".join(r.label for r in runs)
    body = [f"<h1>TransMed study: {html.escape(models)}</h1>",
            '<section id="comparison">',
            markdown_to_html(comparison_markdown(result), level=2)]  # fmt: skip
    for m in PLOTTED_METRICS:
        if m in result["metrics"]:
            values = box_plot_values(runs, m)
            png = box_plots(values, METRIC_NAMES[m], reference=result["reference"])
            body.append(_img(png, f"{METRIC_NAMES[m]} per case and region, every run"))
    body.append("</section>")
    for i, run in enumerate(runs):
        body += [f'<section id="run-{i}">', *run_sections(run, data, level=2), "</section>"]
    return _page(f"TransMed study: {models}", body)


def write_study_report(
    folders: list[str | Path] | tuple[str | Path, ...], out: str | Path, **kwargs: Any
) -> Path:
    """Write :func:`build_study_report` to ``out`` atomically."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {path}: is a folder; give a file name such as report.html")
    return atomic_write_bytes(path, build_study_report(folders, **kwargs).encode("utf-8"))


def write_html_report(
    folder: str | Path, out: str | Path | None = None, *, data: str | Path | None = None
) -> Path:
    """Write :func:`build_report` to ``out`` (default ``folder/report.html``) atomically."""
    folder = Path(folder)
    path = Path(out) if out is not None else folder / "report.html"
    if path.is_dir():
        raise ValueError(f"--out {path}: is a folder; give a file name such as report.html")
    return atomic_write_bytes(path, build_report(folder, data=data).encode("utf-8"))
