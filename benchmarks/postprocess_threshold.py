"""Choose the small-component clean-up of a model on held-out cases (network grid).

    python benchmarks/postprocess_threshold.py --models v1_1=OLD.pt,v1_2=generalist \
        --cases RUN/validation/generated RUN/validation/cohort

Each case (``*.npz`` written by the generalist recipe's ``prepare_validation``: a z-scored
image and internal labels on the 1.5 mm working grid) is predicted once per model the way
``transmed predict`` does (sliding window, overlap 0.5, nested labels by
``regions_to_labels``); then every threshold pair (``--min-component-mm3`` × ``--et-min-mm3``)
is applied with :func:`transmed.inference.postprocess.postprocess_labels` and scored (Dice per
region; both empty = 1). Writes ``benchmarks/results/generalist/postprocess_threshold.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REGIONS = ("WT", "TC", "ET")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="name=checkpoint_or_shipped_name,...")
    ap.add_argument("--cases", type=Path, nargs="+", required=True, help="folders of *.npz")
    ap.add_argument("--min-component", default="0,20,100,250,500,1000")
    ap.add_argument("--et-min", default="0,250,500")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/generalist"))
    args = ap.parse_args()
    import torch

    from transmed.data.labels import labels_to_regions, regions_to_labels
    from transmed.evaluation.metrics import dice
    from transmed.inference.core import predict_probabilities
    from transmed.inference.postprocess import PostprocessConfig, postprocess_labels
    from transmed.io.atomic import atomic_write_text
    from transmed.models.checkpoint import load_model
    from transmed.models.pretrained import resolve_model
    from transmed.transforms.store import load_arrays

    mcs = [float(v) for v in args.min_component.split(",")]
    ets = [float(v) for v in args.et_min.split(",")]
    paths = sorted(p for d in args.cases for p in d.glob("*.npz"))
    out: dict = {"cases": [str(p) for p in paths], "models": {}, "scores": {}}
    for name, src in (kv.split("=", 1) for kv in args.models.split(",")):
        path = resolve_model(src) if not Path(src).exists() else Path(src)
        out["models"][name] = str(path)
        model = load_model(path).eval()
        scores: dict[str, dict[str, list[float]]] = {}
        for p in paths:
            image, label = load_arrays(p)
            with torch.no_grad():
                probs = predict_probabilities(model, image, roi_size=(64, 64, 64), overlap=0.5,
                                              precision="fp32")  # fmt: skip
            labels, ref = regions_to_labels(probs), labels_to_regions(label)
            for mc in mcs:
                for et in ets:
                    clean = postprocess_labels(labels, (1.5,) * 3, PostprocessConfig(mc, et))
                    reg = labels_to_regions(clean)
                    scores.setdefault(f"{mc:g}/{et:g}", {})[p.stem] = [
                        float(dice(reg[i], ref[i])) for i in range(3)]
            print(name, p.stem, flush=True)
        out["scores"][name] = scores
    rows = ["| model | min component mm³ / ET min mm³ | WT | TC | ET | mean |",
            "|---|---|---|---|---|---|"]
    for name, scores in out["scores"].items():
        for key, per_case in scores.items():
            a = np.array(list(per_case.values()))
            rows.append(f"| {name} | {key} | " + " | ".join(f"{v:.3f}" for v in a.mean(0))
                        + f" | {a.mean():.4f} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "postprocess_threshold.json", json.dumps(out, indent=1) + "\n")
    md = ["# Small-component clean-up: Dice against the threshold", "",
          f"{len(paths)} cases: " + ", ".join(str(d) for d in args.cases) + ". Sliding window, "
          "overlap 0.5, nested labels, network grid (1.5 mm); both-empty regions score 1.", "",
          *rows, ""]  # fmt: skip
    atomic_write_text(args.out / "postprocess_threshold.md", "\n".join(md))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
