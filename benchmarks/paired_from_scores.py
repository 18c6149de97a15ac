"""Paired comparison of two models from a `postprocess_threshold.py` result (network grid).

For one clean-up setting (``--key``, e.g. ``250/0/20``; the only one when the run had a
single setting), the per-case mean Dice over WT/TC/ET of model A minus model B, with the 95 %
bootstrap CI and the Wilcoxon and t-test p-values of ``transmed.evaluation.statistics``, for
the tumour cases, per case prefix (the pool: ``s5_...``, ``s7_...``) and all together; plus
the summed false ET of each model on cases with no ET.

    python benchmarks/paired_from_scores.py RESULT.json [MORE.json ...] --a transmed_a --b unet \
        --out benchmarks/results/generalist/unet_baseline/decision_pools_paired.md

With several results (one per model or per case folder), their scores are pooled (a model's
cases from every file; its false ET summed over them); only cases both models were scored on
are paired.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from transmed.evaluation.statistics import paired_tests
from transmed.io.atomic import atomic_write_text


def paired_rows(result: dict, a: str, b: str, key: str) -> list[str]:
    """Markdown rows: one per case group (each pool's tumour cases, all tumour cases)."""
    free = set(result["tumour_free"])
    sa, sb = result["scores"][a][key], result["scores"][b][key]
    cases = sorted(c for c in sa if c in sb and c not in free)
    groups = {f"pool {p[1:]}": [c for c in cases if c.split("_")[0] == p]
              for p in sorted({c.split("_")[0] for c in cases})}  # fmt: skip
    groups["all tumour cases"] = cases
    rows = []
    for name, cs in groups.items():
        x = np.array([np.mean(sa[c]) for c in cs])
        y = np.array([np.mean(sb[c]) for c in cs])
        t = paired_tests(x, y)
        per_region = " / ".join(f"{np.mean([sa[c][i] - sb[c][i] for c in cs]):+.3f}"
                                for i in range(3))  # fmt: skip
        rows.append(f"| {name} | {len(cs)} | {x.mean():.3f} | {y.mean():.3f} | "
                    f"{t['mean_diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] | "
                    f"{per_region} | {t['wilcoxon_p']:.3f} |")  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path, nargs="+")
    ap.add_argument("--a", required=True, help="model name in the result (A in A - B)")
    ap.add_argument("--b", required=True)
    ap.add_argument("--key", default=None, help="clean-up setting; default: the only one")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result: dict = {"scores": {}, "false_et_cases": {}, "false_et_ml": {}}
    free: set[str] = set()
    noet: set[str] = set()
    for path in args.result:
        r = json.loads(path.read_text())
        for model, per_key in r["scores"].items():  # one model may come in several files
            for key, per_case in per_key.items():
                result["scores"].setdefault(model, {}).setdefault(key, {}).update(per_case)
        for part in ("false_et_cases", "false_et_ml"):  # summed over the files' cases
            for model, per_key in r.get(part, {}).items():
                into = result[part].setdefault(model, {})
                for key, v in per_key.items():
                    into[key] = into.get(key, 0) + v
        free |= {Path(c).stem for c in r["tumour_free"]}
        noet |= {Path(c).stem for c in r["without_et"]}
    result["tumour_free"], result["without_et"] = sorted(free), sorted(noet)
    for m in (args.a, args.b):
        if m not in result["scores"]:
            raise SystemExit(f"{m}: not in {sorted(result['scores'])}")
    keys = sorted(result["scores"][args.a])
    key = args.key or (keys[0] if len(keys) == 1 else None)
    if key not in keys:
        raise SystemExit(f"give --key, one of {keys}")
    n_free, n_noet = len(result["tumour_free"]), len(result["without_et"])
    names = ", ".join(p.name for p in args.result)
    lines = [f"# {args.a} − {args.b}, paired, network grid ({names}, setting {key})",
             "", "Per-case mean Dice over WT/TC/ET on the tumour cases; 95 % bootstrap CI; "
             "both-empty regions score 1.", "",
             f"| cases | n | {args.a} | {args.b} | {args.a} − {args.b} [95 % CI] | "
             "WT / TC / ET Δ | p Wilcoxon |", "|---|---:|---:|---:|---|---|---:|",
             *paired_rows(result, args.a, args.b, key), "",
             f"False ET on the cases without ET ({n_noet} in all, {n_free} tumour-free), "
             "summed over the cases each model's result file scored:", ""]  # fmt: skip
    for m in (args.a, args.b):
        lines.append(f"- {m}: {result['false_et_cases'][m].get(key, 0)} cases, "
                     f"{result['false_et_ml'][m].get(key, 0.0):.2f} ml")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
