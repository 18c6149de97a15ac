"""Held-out accuracy of the shipped generalist model against other models, through the product
path (`transmed predict` on NIfTI files, `transmed evaluate`, `transmed compare`).

Two test sets, both unseen in training:

- ``generated``: heads and brains from the domain-randomised generator with label maps of a
  seed the training never used (pool seed 2), written as raw NIfTI on their 1.5 mm grid
  (skull on or stripped, thick slices, random contrasts; all four series present);
- ``cohort``: the original `transmed data synth` cohort (fixed contrasts, skull-stripped,
  240x240x155 at 1 mm, BraTS 2021 layout), seed 7.

    python benchmarks/generalist_eval.py --models generalist=generalist,demo=RUN_OR_CKPT \
        --work /tmp/geval --out benchmarks/results/generalist

Writes ``summary.json``/``summary.md`` (mean Dice per region and set, false enhancing tumour
on cases without any) and, for two or more models, ``compare_<set>/`` (paired statistics).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from transmed.io.atomic import atomic_write_text

MODALITIES = ("t1", "t1ce", "t2", "flair")


def write_generated(root: Path, n: int, seed: int = 2, indices: list[int] | None = None,
                    draws: list[int] | None = None, first: int | None = None) -> Path:  # fmt: skip
    """Raw generated cases (scanner-like: not z-scored, skull on or off) from label maps
    ``indices`` of pool ``seed``; ``draws[k]`` picks another appearance of the same map;
    ``first`` numbers the cases from it instead of by map index."""
    from transmed.data.generator import GeneratorConfig, LabelMapPool
    from transmed.data.generator.dataset import sample_rng
    from transmed.data.generator.sample import draw_sample

    indices = list(range(n)) if indices is None else indices
    pool = LabelMapPool(root.parent / "labelmaps", max(indices, default=0) + 1, seed, 1.5)
    cfg = GeneratorConfig(dropout_prob=0.0)
    draws = [0] * len(indices) if draws is None else draws
    info_all = {}
    # case numbers: first + k when ``first`` is given, else the pool's number + map index
    numbers = ([first + k for k in range(len(indices))] if first is not None else
               [(90000 if seed == 2 else 90000 + 1000 * seed) + i for i in indices])  # fmt: skip
    for i, d, number in zip(indices, draws, numbers, strict=True):
        cid = f"BraTS2021_{number:05d}"
        case = root / cid
        if (case / f"{cid}_seg.nii.gz").is_file():
            continue
        case.mkdir(parents=True, exist_ok=True)
        image, fine, info = draw_sample(pool.get(i), sample_rng(seed, d, i), cfg, whole=True,
                                        raw=True)  # fmt: skip
        affine = np.diag([1.5, 1.5, 1.5, 1.0])
        for c, m in enumerate(MODALITIES):
            nib.save(nib.Nifti1Image(image[c], affine), str(case / f"{cid}_{m}.nii.gz"))
        seg = np.zeros(fine.shape, np.uint8)
        seg[(fine == 4) | (fine == 5)], seg[fine == 7], seg[fine == 6] = 1, 2, 4
        nib.save(nib.Nifti1Image(seg, affine), str(case / f"{cid}_seg.nii.gz"))
        info_all[cid] = info
    if info_all:
        (root / "generation.json").write_text(json.dumps(info_all, indent=1))
    return root


def write_generated_without_et(root: Path, n: int, seed: int = 3, scan: int = 80) -> Path:
    """``n`` raw generated cases whose tumour has no enhancing part (non-enhancing, lower-grade
    tumours): the first ``n`` such label maps of a pool of another seed (the target "no ET
    where there is none")."""
    from transmed.data.generator import LabelMapPool

    pool = LabelMapPool(root.parent / "labelmaps", scan, seed, 1.5)
    picked = [i for i in range(scan) if not np.any(pool.get(i).fine == 6)][:n]
    return write_generated(root, n, seed, indices=picked)


def write_generated_tumour_free(root: Path, n: int, seed: int = 3, scan: int = 80) -> Path:
    """``n`` raw generated heads with no tumour at all: the pool's own tumour-free label maps
    (about 5 % of maps; nothing erased, no mass effect), each drawn with several appearances
    (contrast, resolution, skull, bias) when there are fewer maps than ``n``."""
    from transmed.data.generator import LabelMapPool

    pool = LabelMapPool(root.parent / "labelmaps", scan, seed, 1.5)
    free = [i for i in range(scan) if pool.get(i).tumour_voxels.size == 0]
    if not free:
        raise SystemExit(f"no tumour-free label map among the first {scan} of pool {seed}")
    picked = [free[k % len(free)] for k in range(n)]
    draws = [k // len(free) for k in range(n)]
    return write_generated(root, n, seed, indices=picked, draws=draws, first=95000)


def write_cohort(root: Path, n: int, seed: int = 7) -> Path:
    if root.is_dir() and len(list(root.glob("BraTS2021_*"))) >= n:
        return root
    subprocess.run([sys.executable, "-m", "transmed.cli", "data", "synth", "--out", str(root),
                    "--cases", str(n), "--seed", str(seed)], check=True)  # fmt: skip
    return root


def run(cmd: list[str], allowed: tuple[int, ...] = (0,)) -> float:
    """Run a transmed command; ``allowed`` exit codes (predict and evaluate exit 1 when some
    case failed: those cases are scored as the worst case, not dropped)."""
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "transmed.cli", *cmd]).returncode
    if rc not in allowed:
        raise RuntimeError(f"transmed {cmd[0]} exited with {rc}")
    return time.perf_counter() - t0


def false_volumes(pred_dir: Path, ref_dir: Path) -> dict[str, dict[str, float]]:
    """Predicted volume (ml) of each region the reference does not have at all, per case."""
    regions = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    out: dict[str, dict[str, float]] = {}
    for seg in sorted(ref_dir.glob("*/*_seg.nii.gz")):
        ref = np.asarray(nib.load(str(seg)).dataobj)
        absent = [r for r, vals in regions.items() if not np.isin(ref, vals).any()]
        pred = pred_dir / f"{seg.parent.name}.nii.gz"
        if not absent or not pred.is_file():
            continue
        img = nib.load(str(pred))
        lab = np.asarray(img.dataobj)
        ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        out[seg.parent.name] = {r: round(float(np.isin(lab, regions[r]).sum() * ml), 3)
                                for r in absent}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="name=path_or_shipped_name,...")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/generalist"))
    ap.add_argument("--n-generated", type=int, default=12)
    ap.add_argument("--n-cohort", type=int, default=6)
    ap.add_argument("--n-without-et", type=int, default=0,
                    help="also N generated cases with non-enhancing tumours only (false ET)")
    ap.add_argument("--n-tumour-free", type=int, default=0,
                    help="also N generated heads with no tumour (false WT/TC/ET volume)")
    ap.add_argument("--mode", default=None, help="force --mode whole|sliding")
    ap.add_argument("--predict-args", action="append", default=[], metavar="NAME=ARGS",
                    help="extra `transmed predict` arguments for model NAME, e.g. "
                    "'v1_3_n4=--bias-correction n4' (repeatable)")
    ap.add_argument("--generated-seed", type=int, default=2,
                    help="label-map pool of the generated set (2: the test set; another seed "
                    "gives a decision set that the test set never sees)")
    ap.add_argument("--extra-seed", type=int, default=3,
                    help="label-map pool of the without-ET and tumour-free sets")
    ap.add_argument("--keep", action="store_true",
                    help="reuse predictions and evaluations already in --work (resume)")
    args = ap.parse_args()
    models = dict(kv.split("=", 1) for kv in args.models.split(","))
    extra_args = {k: v.split() for k, v in (kv.split("=", 1) for kv in args.predict_args)}
    if set(extra_args) - set(models):
        raise SystemExit(f"--predict-args names no model: {sorted(set(extra_args) - set(models))}")
    sets = {}
    if args.n_generated:
        sets["generated"] = write_generated(args.work / "generated", args.n_generated,
                                            args.generated_seed)  # fmt: skip
    if args.n_cohort:
        sets["cohort"] = write_cohort(args.work / "cohort", args.n_cohort)
    if args.n_without_et:
        sets["without_et"] = write_generated_without_et(args.work / "without_et",
                                                        args.n_without_et, args.extra_seed)
    if args.n_tumour_free:
        sets["tumour_free"] = write_generated_tumour_free(args.work / "tumour_free",
                                                          args.n_tumour_free, args.extra_seed)
    summary: dict = {"models": models, "predict_args": extra_args, "sets": {}, "seconds": {},
                     "seeds": {"generated": args.generated_seed, "extra": args.extra_seed}}
    for set_name, ref in sets.items():
        summary["sets"][set_name] = {}
        evals = []
        for name, model in models.items():
            pred = args.work / f"pred_{set_name}_{name}"
            # a run-like folder holding evaluation.{csv,json}: what `transmed compare` reads
            ev = args.work / f"eval_{set_name}_{name}" / "evaluation"
            ev.parent.mkdir(parents=True, exist_ok=True)
            extra = ["--mode", args.mode] if args.mode else []
            secs = 0.0
            if not (args.keep and (pred / "predict_summary.json").is_file()):
                secs = run(["predict", "-m", model, "-i", str(ref), "-o", str(pred), "--quiet",
                            "--overwrite", *extra, *extra_args.get(name, [])],
                           allowed=(0, 1))  # fmt: skip
            if not (args.keep and ev.with_name(ev.name + ".json").is_file()):
                run(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(ev),
                     "--no-lesionwise"], allowed=(0, 1))  # fmt: skip
            res = json.loads(ev.with_name(ev.name + ".json").read_text())  # evaluate's --out
            fv = false_volumes(pred, ref)
            summary["sets"][set_name][name] = {
                "evaluation": str(ev), "false_volume_ml": fv,
                # predicted ET (ml) on the cases without any ET
                "false_et_ml": {c: v["ET"] for c, v in fv.items() if "ET" in v},
                **{k: v for k, v in res.items() if k != "cases"},
            }  # fmt: skip
            summary["seconds"][f"{set_name}/{name}"] = round(secs, 1)
            evals.append(str(ev.parent))
        if len(evals) > 1:
            run(["compare", *evals, "--out", str(args.out / f"compare_{set_name}")])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()
