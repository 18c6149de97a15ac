"""Generate a whole cohort, in parallel worker processes, with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from transmed.data.synth.anatomy import Template, load_template, output_grid, preload_template
from transmed.data.synth.case import MAX_INDEX, SynthConfig, generate_case
from transmed.data.synth.io import plan_folders, write_case
from transmed.progress import progress_bar

#: With ``workers=None``, use processes only when the cohort has at least this many voxels.
PARALLEL_MIN_VOXELS = 3 * 240 * 240 * 155


def _init_worker(template_file: str, spacing: tuple[float, float, float]) -> None:
    """Worker start: one torch thread (the processes are the parallelism), shared template."""
    import torch

    torch.set_num_threads(1)
    with np.load(template_file) as npz:
        preload_template(spacing, Template(data=npz["data"], affine=npz["affine"]))


def _make_case(
    seed: int, index: int, shape: tuple[int, int, int], config: SynthConfig, out_dir: str
) -> str:
    return str(write_case(generate_case(seed, index, shape, config), out_dir))


def generate_cohort(
    out_dir: str | Path,
    n_cases: int,
    seed: int,
    shape: tuple[int, int, int] = (240, 240, 155),
    workers: int | None = None,
    progress: bool = True,
    *,
    config: SynthConfig | None = None,
    skip_existing: bool = False,
) -> list[Path]:
    """Write cases ``0 .. n_cases - 1`` of the cohort ``seed`` under ``out_dir``.

    Args:
        workers: processes; ``None`` = one per CPU core (capped at the cases to generate) when
            the cohort is at least three full-size cases, else 1 (start-up would dominate).
            Results do not depend on it: case ``i`` only uses ``SeedSequence([seed, i])``.
        skip_existing: keep complete existing case folders (resume) instead of refusing.
    Returns:
        The case folders, in index order.
    Raises:
        ValueError: ``n_cases`` outside [1, 100000], a negative seed, a shape side outside
            [16, 512], ``workers < 1``, or existing non-empty case folders (never overwritten).
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)):
        raise ValueError(f"n_cases must be an integer, got {n_cases!r}")
    if not 1 <= n_cases <= MAX_INDEX + 1:
        raise ValueError(f"n_cases must be in [1, {MAX_INDEX + 1}], got {n_cases}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    grid = output_grid(shape)
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    folders, todo = plan_folders(out_dir, int(n_cases), skip_existing=skip_existing)
    out_dir.mkdir(parents=True, exist_ok=True)
    if workers is None:  # worker start-up (~3 s) only pays off for a few full-size cases
        big = len(todo) * int(np.prod(grid.shape)) >= PARALLEL_MIN_VOXELS
        workers = (os.cpu_count() or 1) if big else 1
    n_workers = min(workers, max(len(todo), 1))
    bar = progress_bar(total=len(todo), desc="synth", unit="case", disable=not progress)
    with bar:
        if n_workers == 1:
            for i in todo:
                _make_case(int(seed), i, grid.shape, config, str(out_dir))
                bar.update()
            return folders
        template = load_template(grid.spacing)  # derived once, handed to the workers
        with tempfile.TemporaryDirectory(prefix="transmed-synth-") as tmp:
            template_file = os.path.join(tmp, "template.npz")
            np.savez(template_file, data=template.data, affine=template.affine)
            # spawn, not fork: forking a process whose torch thread pool is live can deadlock
            with ProcessPoolExecutor(
                max_workers=n_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(template_file, grid.spacing),
            ) as pool:
                futures = [
                    pool.submit(_make_case, int(seed), i, grid.shape, config, str(out_dir))
                    for i in todo
                ]
                for future in as_completed(futures):
                    future.result()
                    bar.update()
    return folders
