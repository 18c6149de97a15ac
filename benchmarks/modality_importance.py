"""Which input series does a model rely on? Dice and false tumour with series left out.

Each case (``*.npz`` on the 1.5 mm network grid, as ``postprocess_threshold.py --write-cases``
writes them) is predicted the way ``postprocess_threshold.py`` does (sliding window, overlap
0.5, nested labels, the given clean-up), once with all four series and once per left-out
pattern. A left-out series is set to 0, the z-scored mean: exactly how the generator's modality
dropout presents a missing series in training (``transmed.data.generator.sample``), so every
pattern of ``DROPOUT_PATTERNS`` is one the model has seen. T1ce is never left out in training,
so leaving it out (``t1ce``) is out of distribution and only shows how much the model leans
on it.

For each model and pattern, the tumour cases' mean Dice per region and its paired difference
from all four series (95 % bootstrap CI, Wilcoxon p), and the summed false WT / TC / ET on
the tumour-free heads. A series whose removal changes neither is one the model ignores.

    python benchmarks/modality_importance.py --models v2_1=generalist --cases POOL12 \
        --out W --name v2_1_pool12                                    # and POOL13
    python benchmarks/modality_importance.py --merge W/v2_1_pool12.json W/v2_1_pool13.json \
        --out benchmarks/results/generalist/modality_importance --name v2_1_pools12_13
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")
DEFAULT_PATTERNS = "t1,t2,flair,t1+t2,t1+t2+flair,t1ce"


def parse_pattern(text: str) -> tuple[int, ...]:
    """``"t1+t2"`` → ``(0, 2)``, the channel indices to leave out.

    Raises:
        ValueError: an unknown series name, an empty pattern, or all four series.
    """
    names = [n.strip().lower() for n in text.split("+") if n.strip()]
    unknown = [n for n in names if n not in MODALITIES]
    if not names or unknown:
        raise ValueError(f"pattern {text!r}: expected series from {MODALITIES} joined by '+'")
    idx = tuple(sorted({MODALITIES.index(n) for n in names}))
    if len(idx) == len(MODALITIES):
        raise ValueError(f"pattern {text!r}: leaves no series in")
    return idx


def leave_out(image: np.ndarray, channels: tuple[int, ...]) -> np.ndarray:
    """A copy of ``image`` (C, D, H, W) with ``channels`` set to 0, as modality dropout does."""
    out = image.copy()
    out[list(channels)] = 0.0
    return out


def merge(results: list[dict]) -> dict:
    """One result from several (e.g. one per pool): their cases pooled per model and pattern.

    Raises:
        ValueError: the results differ in clean-up or patterns.
    """
    first = results[0]
    for r in results[1:]:
        if r["cleanup"] != first["cleanup"] or r["patterns"] != first["patterns"]:
            raise ValueError("results to merge must share the clean-up and the patterns")
    out: dict = {"cases": [], "cleanup": first["cleanup"], "patterns": first["patterns"],
                 "tumour_free": [], "models": {}, "dice": {}, "volumes_ml": {}}  # fmt: skip
    for r in results:
        out["cases"] += r["cases"]
        out["tumour_free"] += [c for c in r["tumour_free"] if c not in out["tumour_free"]]
        out["models"].update(r["models"])
        for part in ("dice", "volumes_ml"):
            for name, per_pattern in r[part].items():
                into = out[part].setdefault(name, {})
                for v, per_case in per_pattern.items():
                    into.setdefault(v, {}).update(per_case)
    return out


def table_rows(out: dict) -> list[str]:
    """Markdown rows: per model and pattern, the tumour cases' Dice, its paired difference from
    all four series, and the false tumour on the tumour-free heads (summed; heads with any)."""
    from transmed.evaluation.statistics import paired_tests

    free = set(out["tumour_free"])
    rows = [
        "| model | left out | WT | TC | ET | mean | − all four: mean [95 % CI] | Wilcoxon p "
        "| false WT / TC / ET ml, tumour-free | heads with false WT |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in out["models"]:
        sc, vol = out["dice"][name], out["volumes_ml"][name]
        tumour = sorted(c for c in sc["all"] if c not in free)
        base = np.array([np.mean(sc["all"][c]) for c in tumour])
        for v in out["patterns"]:
            a = np.array([sc[v][c] for c in tumour])
            fv = np.array([vol[v][c] for c in sorted(vol[v]) if c in free]).reshape(-1, 3)
            diff, p_value = "", ""
            if v != "all":
                t = paired_tests(a.mean(1), base)
                diff = f"{t['mean_diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]"
                p_value = f"{t['wilcoxon_p']:.3g}"
            rows.append(f"| {name} | {'none' if v == 'all' else v} | "
                        + " | ".join(f"{x:.3f}" for x in a.mean(0))
                        + f" | {a.mean():.3f} | {diff} | {p_value} | "
                        + " / ".join(f"{x:.1f}" for x in fv.sum(0))
                        + f" | {int((fv[:, 0] > 0).sum())} of {len(fv)} |")  # fmt: skip
    return rows


def write(out: dict, folder: Path, name: str, source: str) -> None:
    """``folder/name.json`` (the result) and ``folder/name.md`` (its table)."""
    from transmed.io.atomic import atomic_write_text

    free = set(out["tumour_free"])
    n = len(out["cases"])
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{name}.json", json.dumps(out, indent=1) + "\n")
    rows = table_rows(out)
    md = ["# Which series does the model use? Dice with series left out", "",
          f"{n} cases ({n - len(free)} with tumour, {len(free)} tumour-free): {source}. "
          f"Network grid (1.5 mm), sliding window, overlap 0.5, clean-up {out['cleanup']}. A "
          "left-out series is set to 0 (the z-scored mean), as the generator's modality dropout "
          "does; `t1ce` is never left out in training. Dice over the tumour cases; false tumour "
          "summed over the tumour-free heads.", "", *rows, ""]  # fmt: skip
    atomic_write_text(folder / f"{name}.md", "\n".join(md))
    print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="name=checkpoint_or_shipped_name,...")
    ap.add_argument("--cases", type=Path, nargs="+")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="tabulate earlier results (JSON) together instead of predicting",
    )
    ap.add_argument(
        "--patterns",
        default=DEFAULT_PATTERNS,
        help="comma-separated left-out patterns, series joined by '+'",
    )
    ap.add_argument(
        "--cleanup",
        default="250/0/20",
        help="min component mm³ / ET min mm³ / coreless WT margin mm (or off)",
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="modality_importance")
    args = ap.parse_args()
    if args.merge:
        results = [json.loads(p.read_text()) for p in args.merge]
        write(merge(results), args.out, args.name, ", ".join(str(p) for p in args.merge))
        return
    if not args.models or not args.cases:
        ap.error("--models and --cases are required (or --merge)")
    patterns = {p: parse_pattern(p) for p in args.patterns.split(",")}
    mc, et, margin = args.cleanup.split("/")

    import torch

    from transmed.data.labels import labels_to_regions, regions_to_labels
    from transmed.evaluation.metrics import dice
    from transmed.inference.core import predict_probabilities
    from transmed.inference.postprocess import PostprocessConfig, postprocess_labels
    from transmed.models.checkpoint import load_model
    from transmed.models.pretrained import resolve_model
    from transmed.training.generalist import GENERALIST_SPACING
    from transmed.transforms.store import load_arrays

    spacing = (GENERALIST_SPACING,) * 3  # the network grid the cases are stored on
    voxel_ml = GENERALIST_SPACING**3 / 1000.0

    cfg = PostprocessConfig(float(mc), float(et), margin != "off",
                            0.0 if margin == "off" else float(margin))  # fmt: skip
    paths = sorted(p for d in args.cases for p in d.glob("*.npz"))
    if not paths:
        raise SystemExit(f"no .npz cases in {[str(d) for d in args.cases]}")
    variants = {"all": (), **patterns}
    out: dict = {"cases": [str(p) for p in paths], "cleanup": args.cleanup,
                 "patterns": {k: [MODALITIES[i] for i in v] for k, v in variants.items()},
                 "tumour_free": [], "models": {}, "dice": {}, "volumes_ml": {}}  # fmt: skip
    for name, src in (kv.split("=", 1) for kv in args.models.split(",")):
        path = resolve_model(src) if not Path(src).exists() else Path(src)
        model = load_model(path).eval()
        out["models"][name] = str(path)
        scores = out["dice"][name] = {v: {} for v in variants}
        vols = out["volumes_ml"][name] = {v: {} for v in variants}
        for p in paths:
            image, label = load_arrays(p)
            ref = labels_to_regions(label)
            if not ref[0].any() and p.stem not in out["tumour_free"]:
                out["tumour_free"].append(p.stem)
            for v, drop in variants.items():
                with torch.no_grad():
                    probs = predict_probabilities(model, leave_out(image, drop),
                                                  roi_size=(64, 64, 64), overlap=0.5,
                                                  precision="fp32")  # fmt: skip
                reg = labels_to_regions(postprocess_labels(regions_to_labels(probs),
                                                           spacing, cfg))  # fmt: skip
                scores[v][p.stem] = [float(dice(reg[i], ref[i])) for i in range(3)]
                vols[v][p.stem] = [float(reg[i].sum()) * voxel_ml for i in range(3)]
            print(name, p.stem, flush=True)
    write(out, args.out, args.name, ", ".join(str(d) for d in args.cases))


if __name__ == "__main__":
    main()
