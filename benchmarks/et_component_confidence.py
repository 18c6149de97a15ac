"""How sure is the model of each enhancing-tumour component it reports? (a diagnostic)

    python benchmarks/et_component_confidence.py --model generalist --cases W/decision \
        --out benchmarks/results/generalist/stage6_not_shipped/et_components_v1_3_1.json

Each case (``*.npz``: z-scored image + internal labels on the 1.5 mm working grid, as
``postprocess_threshold.py`` reads them) is predicted as ``transmed predict`` does (sliding
window, overlap 0.5, nested labels), cleaned with the model's recorded post-processing, and
every 26-connected ET component is listed with its volume, its peak and mean ET probability,
and whether it touches reference ET. The question: could a confidence threshold remove false
ET without removing true ET? It decides nothing by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="generalist", help="checkpoint path or shipped name")
    ap.add_argument("--cases", type=Path, required=True, help="folder of *.npz cases")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args()
    import torch
    from scipy import ndimage as ndi

    from transmed.data.labels import labels_to_regions, regions_to_labels
    from transmed.inference.checkpoint_config import postprocess_from_checkpoint
    from transmed.inference.core import predict_probabilities
    from transmed.inference.postprocess import PostprocessConfig, postprocess_labels
    from transmed.io.atomic import atomic_write_text
    from transmed.models.checkpoint import load_checkpoint, load_model
    from transmed.models.pretrained import resolve_model
    from transmed.transforms.store import load_arrays

    path = Path(args.model) if Path(args.model).exists() else resolve_model(args.model)
    model = load_model(path).eval()
    cfg = postprocess_from_checkpoint(load_checkpoint(path), path) or PostprocessConfig()
    spacing = (1.5, 1.5, 1.5)
    structure = ndi.generate_binary_structure(3, 3)
    rows = []
    for p in sorted(args.cases.glob("*.npz")):
        image, label = load_arrays(p)
        ref = labels_to_regions(label)
        with torch.no_grad():
            probs = predict_probabilities(model, image, roi_size=(64, 64, 64), overlap=0.5,
                                          precision="fp32")  # fmt: skip
        reg = labels_to_regions(postprocess_labels(regions_to_labels(probs), spacing, cfg))
        components, n = ndi.label(reg[2], structure=structure)
        for i in range(1, n + 1):
            m = components == i
            rows.append({"case": p.stem, "ml": round(float(m.sum()) * 1.5**3 / 1000, 3),
                         "peak": round(float(probs[2][m].max()), 4),
                         "mean": round(float(probs[2][m].mean()), 4),
                         "true": bool((ref[2] & m).any()),
                         "case_has_et": bool(ref[2].any())})  # fmt: skip
        print(p.stem, n, "ET component(s)", flush=True)
    out = {"model": str(path), "postprocess": dataclasses.asdict(cfg), "cases": str(args.cases),
           "components": sorted(rows, key=lambda r: r["mean"])}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    for r in out["components"]:
        print(f"{r['case']:12s} {'true ' if r['true'] else 'FALSE'} {r['ml']:7.2f} ml  "
              f"peak {r['peak']:.3f}  mean {r['mean']:.3f}")


if __name__ == "__main__":
    main()
