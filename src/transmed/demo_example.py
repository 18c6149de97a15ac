"""The main job (``make demo``): the shipped generalist model on a real native examination.

TCGA-FG-6692 (TCIA/TCGA, CC BY; four native series, skull on, 5.5 mm slices, three grids) goes
through exactly what ``transmed predict`` does (it is called, not re-implemented): brain
extraction, co-registration chosen by evidence, the network on the 1.5 mm working grid, the
label map back on the T1ce's own grid (and every series' grid), provenance JSON. Then an
overlay picture and a small HTML page are written next to it.

The synthetic ablation study that used to be the main job is ``transmed demo --study``.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

CASE = "TCGA-FG-6692"
#: file suffix per modality in the example folder
FILES = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}
_COLOURS = {1: (1.0, 0.25, 0.25), 2: (0.25, 0.6, 1.0), 4: (1.0, 1.0, 0.2)}  # NCR, ED, ET


def example_dir() -> Path:
    """The example examination: ``$TRANSMED_EXAMPLE_DIR``, the repository's ``examples/``,
    or ``../shared/data`` next to the checkout."""
    env = os.environ.get("TRANSMED_EXAMPLE_DIR")
    root = Path(__file__).resolve().parents[2]
    candidates = ([Path(env)] if env else []) + [
        root / "examples" / CASE, root.parent / "shared" / "data" / CASE,
    ]  # fmt: skip
    for c in candidates:
        if (c / f"{CASE}_t1c.nii.gz").is_file():
            return c
    raise ValueError(
        f"the example examination {CASE} was not found (looked in "
        f"{', '.join(str(c) for c in candidates)}); set TRANSMED_EXAMPLE_DIR"
    )


def overlay_figure(t1ce: Path, flair: Path, label: Path, flair_label: Path | None,
                   out: Path, title: str) -> Path:  # fmt: skip
    """T1ce and FLAIR (native grids), the slices holding tumour, label outlines drawn on them
    (red necrosis/non-enhancing, blue oedema, yellow enhancing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def load(p: Path) -> np.ndarray:
        return np.asarray(nib.as_closest_canonical(nib.load(str(p))).dataobj, dtype=np.float32)

    img_c, lab_c = load(t1ce), load(label).astype(np.uint8)
    rows = [("T1ce", img_c, lab_c)]
    if flair_label is not None and flair_label.is_file():
        rows.append(("FLAIR", load(flair), load(flair_label).astype(np.uint8)))
    tumour_slices = np.flatnonzero((lab_c > 0).sum(axis=(0, 1)))
    if tumour_slices.size:
        picks = np.unique(np.linspace(tumour_slices.min(), tumour_slices.max(), 4).round())
    else:
        picks = np.linspace(lab_c.shape[2] * 0.3, lab_c.shape[2] * 0.7, 4).round()
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(3.2 * len(picks), 3.4 * len(rows)),
                             squeeze=False)  # fmt: skip
    for r, (name, img, lab) in enumerate(rows):
        for c, zf in enumerate(picks):
            z = int(round(zf / lab_c.shape[2] * lab.shape[2])) if lab is not lab_c else int(zf)
            z = min(max(z, 0), lab.shape[2] - 1)
            ax = axes[r, c]
            sl = img[:, :, z].T
            lo, hi = np.percentile(sl, [1, 99.5]) if sl.any() else (0, 1)
            ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=hi)
            for value, col in _COLOURS.items():
                m = lab[:, :, z].T == value
                if m.any():
                    ax.contour(m, levels=[0.5], colors=[col], linewidths=0.9)
            ax.set_title(f"{name}, slice {z}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def region_volumes_ml(label_path: Path) -> dict[str, float]:
    img = nib.load(str(label_path))
    lab = np.asarray(img.dataobj)
    ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return {
        "WT": round(float(np.isin(lab, (1, 2, 4)).sum() * ml), 2),
        "TC": round(float(np.isin(lab, (1, 4)).sum() * ml), 2),
        "ET": round(float((lab == 4).sum() * ml), 2),
    }


def _html(title: str, png: Path, volumes: dict[str, float], provenance: dict[str, Any] | None,
          seconds: float, view_cmd: str) -> str:  # fmt: skip
    img64 = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(f"<tr><td>{k}</td><td>{v:.2f} ml</td></tr>" for k, v in volumes.items())
    prov = html.escape(json.dumps(provenance, indent=1)) if provenance else "(none written)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 10px}}
pre{{background:#f4f4f4;padding:1em;max-height:30em;overflow:auto;font-size:12px}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Segmented by TransMed's shipped <b>generalist</b> model (trained only on synthetic data;
research use, not a medical device) in {seconds:.1f} s end to end.
Review and correct it in the browser: <code>{html.escape(view_cmd)}</code></p>
<img src="data:image/png;base64,{img64}" style="max-width:100%">
<h2>Region volumes</h2><table>{rows}</table>
<h2>Provenance</h2><pre>{prov}</pre>
<p>Data: TCGA-FG-6692, The Cancer Imaging Archive / TCGA Research Network (CC BY).</p>
</body></html>"""


def predict_args(pred: Path, model: str | None = None) -> list[str]:
    """``transmed predict`` arguments for the example's four native series into ``pred``
    (the shipped model unless ``model`` is given)."""
    src = example_dir()
    args = ["predict", "--case-id", CASE, "-o", str(pred)]
    for mod, suffix in FILES.items():
        args += [f"--{mod}", str(src / f"{CASE}_{suffix}.nii.gz")]
    return args + (["-m", model] if model else [])


def run_example(out: Path, model: str | None = None, extra_args: list[str] | None = None,
                model_label: str = "shipped generalist model") -> dict:
    """Predict the example examination into ``out`` and write the overlay and the page
    (``model_label`` names the model in the overlay's title)."""
    from transmed.cli import app
    from transmed.io.atomic import atomic_write_text

    src = example_dir()
    out = Path(out)
    pred = out / "prediction"
    args = predict_args(pred, model) + ["--all-grids"]
    if (pred / f"{CASE}.nii.gz").exists():
        args.append("--overwrite")
    t0 = time.perf_counter()
    app(args + list(extra_args or []), standalone_mode=False)
    seconds = time.perf_counter() - t0
    label = pred / f"{CASE}.nii.gz"
    flair_label = next(iter(sorted(pred.glob(f"{CASE}*flair*.nii.gz"))), None)
    png = overlay_figure(src / f"{CASE}_t1c.nii.gz", src / f"{CASE}_flair.nii.gz", label,
                         flair_label, out / f"{CASE}_overlay.png",
                         f"{CASE}: {model_label}, native grids "
                         "(red NCR/NET, blue oedema, yellow ET)")  # fmt: skip
    prov_files = sorted(pred.glob(f"{CASE}*provenance*.json")) + sorted(pred.glob("*.json"))
    provenance = json.loads(prov_files[0].read_text()) if prov_files else None
    volumes = region_volumes_ml(label)
    page = out / "report.html"
    title = f"{CASE}: TransMed on a native clinical examination"
    atomic_write_text(page, _html(title, png, volumes, provenance, seconds,
                                  f"transmed view {pred}"))  # fmt: skip
    return {"label": label, "overlay": png, "report": page, "volumes_ml": volumes,
            "seconds": seconds}  # fmt: skip
