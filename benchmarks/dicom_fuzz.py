"""The long run of the DICOM fuzzer (issue 15): mutated instances through the reader and the node.

The suite runs 48 cases (``tests/bench/test_dicom_fuzz.py``); this script runs thousands, with
the same seeds and mutations (``transmed.bench.dicom_fuzz``), and writes
``benchmarks/results/dicom_fuzz.{json,md}``: cases per mutation, what each target answered, the
slowest case, and every defect (an exception other than DicomError from the reader or
InstanceRefused from the node), one line per distinct place. Exit status 1 when any was found.

    python benchmarks/dicom_fuzz.py --cases 3000 --seed 0
    python benchmarks/dicom_fuzz.py --minutes 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transmed.bench.dicom_fuzz import fuzz_in_tempdir
from transmed.bench.results import machine_info, machine_markdown, now_iso, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--stem", default="dicom_fuzz")
    args = parser.parse_args()

    limit = args.minutes * 60 if args.minutes else None
    report = fuzz_in_tempdir(args.cases, args.seed, time_limit_s=limit)
    unique = report.unique_defects()
    result = {
        "benchmark": "dicom_fuzz", "date": now_iso(), "machine": machine_info("cpu"),
        "command": " ".join(["python", "benchmarks/dicom_fuzz.py", *sys.argv[1:]]),
        "seed": args.seed, "cases": report.cases, "seconds": round(report.seconds, 1),
        "slowest_case_s": round(report.slowest_s, 3),
        "mutations": dict(sorted(report.mutations.items())),
        "outcomes": dict(sorted(report.outcomes.items())),
        "defects": len(report.defects),
        "distinct_defects": [vars(d) for d in unique],
    }  # fmt: skip
    lines = [
        "# DICOM fuzzing: the reader and the node's C-STORE check",
        "",
        machine_markdown(result["machine"], result["date"]),
        "",
        f"Command: `{result['command']}`. {report.cases} cases in {report.seconds:.0f} s "
        f"(slowest case {report.slowest_s:.2f} s, both targets). Seeds: pydicom-data's MR_small "
        "(explicit LE, implicit, big endian, RLE; a 3-slice series each), its enhanced MR with "
        "functional groups added, and a synthetic 16-slice T1 series; one file of one seed is "
        "mutated per case.",
        "",
        "| mutation | cases |",
        "|---|---:|",
        *[f"| {name} | {n} |" for name, n in sorted(report.mutations.items())],
        "",
        "| target: outcome | cases |",
        "|---|---:|",
        *[f"| {name} | {n} |" for name, n in sorted(report.outcomes.items())],
        "",
        f"**Defects** (an exception other than DicomError / InstanceRefused): {len(report.defects)}"
        + (f", at {len(unique)} distinct place(s):" if unique else "."),
    ]
    lines += [f"- {d.target}, {d.seed}, {d.mutation}: `{d.error[:120]}` at `{d.where}`"
              for d in unique]  # fmt: skip
    paths = write_results(args.out, args.stem, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"Wrote {paths['json']} and {paths['markdown']}")
    if report.defects:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
