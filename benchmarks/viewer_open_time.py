"""How long ``transmed view`` takes to open a BraTS-sized case in a browser, now and at a ref.

    python benchmarks/viewer_open_time.py [--runs 3] [--baseline-ref HEAD]

One synthetic case of 240 × 240 × 155 voxels, four int16 modalities and a label map, all
``.nii.gz`` (stored LPS, so the server reorients, as for BraTS files), is opened in headless
chromium (Debian's ``/usr/bin/chromium``, software WebGL, driven by Playwright) right after
the server starts, cold. Each run is a fresh process, server and browser; the current tree
and the baseline (``git archive`` of ``--baseline-ref`` into a temporary folder) alternate
(A B B A ...), so both see the same machine load. Per run: seconds from navigation to the
first render of T1ce + labels, the GPU's queued work included (read back), the page's own
marks (case info, image shown, labels drawn), each request's server time, and, once the
page's downloads settle, a switch to FLAIR. The machine's load average
is recorded with every run; writes ``benchmarks/results/viewer_open_time.{json,md}`` (``--name``
for another file name).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM = os.environ.get("TRANSMED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip
SHAPE = (240, 240, 155)
REPO = Path(__file__).resolve().parents[1]
#: WebGL runs asynchronously: reading one pixel back waits for every queued command.
GL_SYNC = (
    "(() => { const gl = tm.nv.gl;"
    " gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4)); })()"
)


def make_case(folder: Path) -> Path:
    """``folder/Big``: four int16 modalities of a ball-shaped head and a BraTS 2021 label map."""
    import nibabel as nib

    d = folder / "Big"
    if (d / "Big.nii.gz").is_file():
        return d
    d.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in SHAPE],
                          indexing="ij")  # fmt: skip
    head = (x**2 + y**2 + z**2 < 0.8).astype(np.float32)
    rng = np.random.default_rng(0)
    for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
        img = head * (100 + 50 * i + 40 * x) + rng.normal(0, 3, SHAPE).astype(np.float32)
        nib.save(nib.Nifti1Image(img.astype(np.int16), affine), d / f"Big_{m}.nii.gz")
    lab = np.zeros(SHAPE, np.uint8)
    r = (x - 0.2) ** 2 + y**2 + z**2
    lab[r < 0.2], lab[r < 0.08], lab[(r < 0.05) & (x > 0.2)] = 2, 1, 4
    nib.save(nib.Nifti1Image(lab, affine), d / "Big.nii.gz")
    return d


def one_run(case: Path) -> dict[str, Any]:
    """Serve ``case`` with the ``transmed`` on ``sys.path`` and open it once (child process)."""
    import socket

    import uvicorn
    from playwright.sync_api import sync_playwright

    import transmed
    from transmed.viewer.app import build_app
    from transmed.viewer.sources import catalogue

    load_before = os.getloadavg()
    token = "bench-" + os.urandom(6).hex()
    import inspect

    cat = catalogue(case)
    # As `transmed view` does where build_app can: prepare the case the page opens first.
    warm = (
        {"warm": cat.cases[0].case_id} if "warm" in inspect.signature(build_app).parameters else {}
    )
    app = build_app(cat, token=token, hosts=["127.0.0.1"], **warm)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/?token={token}"
    requests: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})

        def done(req: Any) -> None:
            path = req.url.split("?")[0].split("/", 3)[-1]
            if path.startswith("api/"):  # time to the response's first byte: the server's part
                requests[path] = round(req.timing["responseStart"] / 1000, 2)

        page.on("requestfinished", done)
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function("window.tm && (tm.state.ready || tm.state.error)", timeout=600_000)
        page.evaluate(GL_SYNC)  # the GPU commands queued so far have run: pixels are there
        wall = time.perf_counter() - t0
        error = page.evaluate("tm.state.error")
        marks = page.evaluate("tm.state.openMarks") or {}
        boot = page.evaluate("tm.state.bootMarks || {}")  # script run, NiiVue attached
        renderer = page.evaluate(
            "(() => { const gl = tm.nv.gl, e = gl.getExtension('WEBGL_debug_renderer_info');"
            " return e ? gl.getParameter(e.UNMASKED_RENDERER_WEBGL) : ''; })()"
        )
        page.wait_for_load_state("networkidle")  # a reviewer looks first; downloads settle
        # ... all four images among them (a page may start the other three a moment later)
        page.wait_for_function(
            "performance.getEntriesByType('resource')"
            ".filter((e) => /[/]image[/]\\w+[.]nii$/.test(e.name)).length >= 4",
            timeout=600_000,
        )
        t1 = time.perf_counter()
        page.locator("#modality").select_option("flair")
        page.wait_for_function("tm.state.modality === 'flair'", timeout=600_000)
        page.evaluate(GL_SYNC)
        switch = time.perf_counter() - t1
        version = browser.version
        browser.close()
    server.should_exit = True
    return {
        "open_s": round(wall, 2),
        "in_page_open_s": round(marks.get("labels", float("nan")) / 1000, 2),
        "marks_s": {k: round(v / 1000, 2) for k, v in marks.items()},
        "boot_marks_s": {k: round(v / 1000, 2) for k, v in boot.items()},
        "server_first_byte_s": requests, "switch_to_flair_s": round(switch, 2), "error": error,
        "load_avg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "chromium": version, "webgl_renderer": renderer, "transmed": str(Path(transmed.__file__)),
    }  # fmt: skip


def _tree_at(ref: str, into: Path) -> Path:
    """``src/`` of the repository at ``ref``, exported (read only use)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _child(src: Path, case: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    me = str(Path(__file__).resolve())
    out = subprocess.run([sys.executable, me, "--one", str(case)], env=env, check=True,
                         capture_output=True, text=True, cwd=src.parent).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def write(results: dict[str, Any], out: Path, name: str = "viewer_open_time") -> None:
    from transmed.io.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(results, indent=1) + "\n")
    rows = []
    for label, runs in results["runs"].items():
        rows.append(
            f"| {label} | {_median(runs, 'open_s')} | {_median(runs, 'in_page_open_s')} | "
            f"{_median(runs, 'switch_to_flair_s')} | "
            f"{', '.join(str(r['open_s']) for r in runs)} | "
            f"{', '.join(str(r['load_avg_1min'][0]) for r in runs)} |"
        )
    md = [
        "# `transmed view`: open time of a 240 × 240 × 155 four-modality case", "",
        f"{results['date']}, {results['machine']}; {results['chromium']} headless, WebGL on "
        f"`{results['webgl_renderer']}` (software, no GPU). Each run: a fresh server and browser, "
        "cold, navigation to the first render of T1ce + labels; runs of the two trees "
        f"alternate. Baseline: `{results['baseline']}`.", "",
        "| tree | open, median (s) | in page, JS only (s) | switch to FLAIR (s) | each run (s) "
        "| 1-min load avg at start |", "|---|---|---|---|---|---|", *rows, "",
        results["note"], "",
        "*open*: navigation to T1ce + labels drawn, the GPU's queued work included (one pixel "
        "read back); *in page*: the page's own clock from opening the case to the labels set, "
        "WebGL work still queued; *switch*: to FLAIR once the page's downloads settled.", "",
    ]  # fmt: skip
    atomic_write_text(out / f"{name}.md", "\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per tree")
    ap.add_argument("--baseline-ref", default="HEAD", help="git ref to compare with ('' none)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "viewer_bench")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--note", default="", help="a line on the machine's load, for the report")
    ap.add_argument("--name", default="viewer_open_time", help="results file name (no suffix)")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child: one run of this case
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.one)))
        return
    case = make_case(args.data)
    trees = {"current": REPO / "src"}
    tmp = Path(tempfile.mkdtemp(prefix="viewer_base_"))
    baseline = ""
    try:
        if args.baseline_ref:
            baseline = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short",
                                       args.baseline_ref], check=True, capture_output=True,
                                      text=True).stdout.strip()  # fmt: skip
            trees = {f"baseline {baseline}": _tree_at(args.baseline_ref, tmp), **trees}
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        for i in range(args.runs):
            # ABBA order: a load that rises or falls during the runs weighs on both trees alike
            order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
            for label, src in order:
                runs[label].append(_child(src, case))
                r = runs[label][-1]
                print(f"run {i + 1} {label}: open {r['open_s']} s, flair {r['switch_to_flair_s']}"
                      f" s, load {r['load_avg_1min']}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    last = runs["current"][-1]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "shape": list(SHAPE), "modalities": 4,
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.system()}",
        "chromium": last["chromium"], "webgl_renderer": last["webgl_renderer"],
        "baseline": baseline or "none", "note": args.note,
        "median_open_s": {label: _median(r, "open_s") for label, r in runs.items()},
        "runs": runs,
    }  # fmt: skip
    write(results, args.out, args.name)
    print(json.dumps(results["median_open_s"]))


if __name__ == "__main__":
    main()
