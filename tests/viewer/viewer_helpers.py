"""Helpers for the viewer tests: tiny cases on disk, a running server, headless chromium.

The browser tests use the system's ``/usr/bin/chromium`` (``make system-deps`` installs it)
through Playwright for Python, never a downloaded browser. Without chromium they skip, or fail
with ``TRANSMED_REQUIRE_BROWSER=1`` (set by ``.ci/run``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

CHROMIUM = os.environ.get("TRANSMED_CHROMIUM", "/usr/bin/chromium")
REQUIRE_ENV = "TRANSMED_REQUIRE_BROWSER"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip
#: Affine of the tiny cases: LPS-stored (x and y flipped), so the RAS reorientation is exercised.
AFFINE = np.array([[-1.0, 0, 0, 20], [0, -1.2, 0, 24], [0, 0, 1.5, -16], [0, 0, 0, 1]])


def make_case(
    folder: Path, case_id: str = "Case_001", shape: tuple[int, int, int] = (40, 48, 32),
    *, prediction_name: str | None = None, affine: np.ndarray = AFFINE, dtype=np.int16,
) -> tuple[Path, np.ndarray]:  # fmt: skip
    """A BraTS 2021 case folder ``folder/case_id`` (``dtype`` images: int16, or uint8 clipped
    to 0-255) with a prediction beside them (``<case_id>.nii.gz``, labels 1/2/4); returns
    (folder, prediction values)."""
    d = folder / case_id
    d.mkdir(parents=True, exist_ok=True)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    head = (x**2 + y**2 + z**2 < 0.8).astype(np.float32)
    rng = np.random.default_rng(0)
    for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
        img = head * (100 + 50 * i + 40 * x) + rng.normal(0, 3, shape)
        img = (np.clip(img, 0, 255) if dtype == np.uint8 else img).astype(dtype)
        nib.save(nib.Nifti1Image(img, affine), d / f"{case_id}_{m}.nii.gz")
    lab = np.zeros(shape, np.uint8)
    r = (x - 0.2) ** 2 + y**2 + z**2
    lab[r < 0.2] = 2
    lab[r < 0.08] = 1
    lab[(r < 0.05) & (x > 0.2)] = 4
    nib.save(nib.Nifti1Image(lab, affine), d / (prediction_name or f"{case_id}.nii.gz"))
    return d, lab


def make_predict_output(root: Path, n: int, shape=(24, 24, 16)) -> tuple[Path, Path]:
    """A dataset of ``n`` BraTS 2021 cases (``root/data``) and a ``transmed predict`` output
    folder for it (``root/pred``: ``<case>.nii.gz`` + predict_summary.json)."""
    data, pred = root / "data", root / "pred"
    pred.mkdir(parents=True)
    results = []
    for i in range(n):
        cid = f"BraTS2021_{i:05d}"
        d, _ = make_case(data, cid, shape)
        shutil.move(d / f"{cid}.nii.gz", pred / f"{cid}.nii.gz")
        results.append({"case_id": cid, "ok": True, "outputs": [str(pred / f"{cid}.nii.gz")]})
    summary = {"model": "runs/tiny", "device": "cpu", "input": str(data), "layout": "brats2021",
               "cases": n, "results": results}  # fmt: skip
    (pred / "predict_summary.json").write_text(json.dumps(summary))
    return data, pred


@dataclass
class DicomCase:
    root: Path  # the folder to view
    study_dir: Path
    seg: Path
    label: np.ndarray  # internal labels on the t1ce series' grid
    series_uid: str


def make_dicom_predict_output(root: Path, synth, *, storage: bool = False) -> DicomCase:
    """A copy of the synthetic DICOM study ``synth`` (``write_dicom_study``) with its predicted
    SEG (the study's own label map), as a ``transmed predict`` output folder (``root/pred``) or
    as the storage folder of ``transmed serve`` (``root/storage``: a job whose images are still
    on disk and whose SEG waits in the outbox)."""
    from transmed.io.dicom import load_study
    from transmed.viewer.saving import seg_module

    if storage:
        job = "20260101T000000-abcdef012345-0a0b0c"
        study_dir = root / "storage" / "jobs" / job / "input"
    else:
        study_dir = root / "study"
    source = Path(next(iter(synth.files.values()))[0]).parents[1]
    shutil.copytree(source, study_dir)
    series = load_study(study_dir).series["t1ce"]
    label = np.asarray(synth.label.data, dtype=np.uint8)
    seg = seg_module().build_seg(label, series)
    uid = str(seg.SOPInstanceUID)
    if storage:
        view = root / "storage"
        (view / "outbox").mkdir(parents=True)
        seg_path = seg_module().write_seg(seg, view / "outbox" / f"{uid}.dcm")
        (view / "outbox" / f"{uid}.json").write_text(json.dumps(
            {"item_id": uid, "job_id": job, "study_key": "abcdef012345", "state": "pending"}))
        (view / "jobs" / job / "state.json").write_text(json.dumps(
            {"job_id": job, "study_uid": synth.study_uid, "study_key": "abcdef012345",
             "state": "done", "seg_sop_instance_uid": uid}))  # fmt: skip
    else:
        view = root / "pred"
        view.mkdir()
        seg_path = seg_module().write_seg(seg, view / f"{uid}.dcm")
        (view / "predict_summary.json").write_text(json.dumps(
            {"studies": 1, "input": str(study_dir), "model": "runs/tiny",
             "results": [{"study": "dicom-abcdef012345", "seg": str(seg_path)}]}))  # fmt: skip
    return DicomCase(view, study_dir, seg_path, label, series.series_uid)


class RunningServer:
    """The viewer app served by uvicorn in a thread on a free loopback port; ``warm``: the
    case the server prepares and names in the page (as ``transmed view`` does)."""

    def __init__(self, path: Path, *, warm: str | None = None, **catalogue_kwargs) -> None:
        import uvicorn

        from transmed.viewer.app import build_app
        from transmed.viewer.sources import catalogue

        self.token = "test-token-" + os.urandom(6).hex()
        self.catalogue = catalogue(path, **catalogue_kwargs)
        self.app = build_app(self.catalogue, token=self.token, hosts=["127.0.0.1", "localhost"],
                             warm=warm)  # fmt: skip
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)  # fmt: skip
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/?token={self.token}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def require_browser() -> None:
    """Skip (or, with TRANSMED_REQUIRE_BROWSER=1 as in CI, fail) without chromium/Playwright."""
    missing = None
    if not Path(CHROMIUM).is_file():
        missing = f"{CHROMIUM} not found: `make system-deps` (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "Playwright for Python is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{missing}; {REQUIRE_ENV}=1 requires it", pytrace=False)
        pytest.skip(missing)


def open_viewer(browser, server: RunningServer, *, case: str | None = None, size=(900, 700)):
    """A page on the viewer with its first (or ``case``) case open; returns the page."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + (f"&case={case}" if case else ""))
    page.wait_for_function("window.tm && (tm.state.ready || tm.state.error)", timeout=60_000)
    page.tm_errors = errors  # type: ignore[attr-defined]
    return page
