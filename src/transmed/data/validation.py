"""Header-only checks of a case: files readable, modalities overlapping, label on an image grid.

Everything here works on NIfTI headers (shape + affine), so a whole dataset is validated before
any voxel array is allocated; :func:`case_problems` is what ``transmed data index`` reports and
what :func:`transmed.data.loading.load_case` refuses to load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transmed.data.cases import Case
from transmed.io.nifti import DEFAULT_MAX_VOXELS, check_nifti_header

#: Two grids are "the same" when shapes match and affines agree to this many mm (entry-wise).
GRID_ATOL_MM = 1e-3
#: Modalities must share at least this fraction of the smallest one's world bounding box.
DEFAULT_MIN_OVERLAP = 0.10


@dataclass(frozen=True)
class HeaderGrid:
    """The voxel grid of one file, read from its header: 3D shape, channels, affine (mm)."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray  # (4, 4) voxel -> RAS+ mm
    channels: int = 1  # size of the 4th axis for MSD-style 4D files


def read_grid(
    path: Path, *, max_voxels: int = DEFAULT_MAX_VOXELS, allow_4d: bool = False
) -> HeaderGrid:
    """Validate a header (see :func:`check_nifti_header`) and return its grid; reads no voxels."""
    img = check_nifti_header(path, max_voxels=max_voxels, allow_4d=allow_4d)
    shape = tuple(int(s) for s in img.shape)
    channels = math.prod(shape[3:])  # Python ints: an int64 product of NIfTI-2 dims can wrap
    return HeaderGrid(path, shape[:3], np.asarray(img.affine, dtype=np.float64), channels)  # type: ignore[arg-type]


def same_grid(a: HeaderGrid, b: HeaderGrid, atol: float = GRID_ATOL_MM) -> bool:
    """True when both grids have the same 3D shape and affines equal within ``atol``."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, rtol=0.0, atol=atol))


def world_bbox(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box ``(lo (3,), hi (3,))`` in mm of a grid's voxel extent.

    The extent runs from voxel edge -0.5 to n - 0.5 on each axis; for oblique affines the box
    encloses the rotated grid (so it over-estimates the extent, never under-estimates it).
    """
    corners = (
        np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
        * (np.asarray(shape[:3], dtype=np.float64))
        - 0.5
    )  # (8, 3) voxel coordinates
    world = corners @ affine[:3, :3].T + affine[:3, 3]  # (8, 3) mm
    return world.min(axis=0), world.max(axis=0)


def overlap_fraction(grids: list[HeaderGrid]) -> float:
    """Volume of the common world bounding box over the smallest grid's box volume (0..1)."""
    boxes = [world_bbox(g.shape, g.affine) for g in grids]
    lo = np.max([b[0] for b in boxes], axis=0)
    hi = np.min([b[1] for b in boxes], axis=0)
    common = float(np.prod(np.clip(hi - lo, 0.0, None)))
    smallest = min(float(np.prod(b[1] - b[0])) for b in boxes)
    return common / smallest if smallest > 0 else 0.0


def _bbox_text(grid: HeaderGrid) -> str:
    lo, hi = world_bbox(grid.shape, grid.affine)
    return " ".join(f"{ax} [{a:.0f}, {b:.0f}]" for ax, a, b in zip("xyz", lo, hi, strict=True))


def overlap_problem(
    grids: dict[str, HeaderGrid], min_overlap: float = DEFAULT_MIN_OVERLAP
) -> str | None:
    """A message when the modalities' world boxes share less than ``min_overlap``, else None."""
    if len({g.path for g in grids.values()}) < 2:
        return None  # one file (MSD 4D) or one modality: nothing to compare
    fraction = overlap_fraction(list(grids.values()))
    if fraction >= min_overlap:
        return None
    # The outlier is the modality whose removal leaves the others sharing the most.
    worst = max(
        grids,
        key=lambda m: overlap_fraction([g for n, g in grids.items() if n != m] or [grids[m]]),
    )
    boxes = "; ".join(f"{m} {_bbox_text(g)}" for m, g in grids.items())
    return (
        f"modalities do not overlap in space ({fraction:.0%} of the smallest image is shared, "
        f"need {min_overlap:.0%}); least overlapping: {worst} {grids[worst].path}; world "
        f"boxes (mm): {boxes}"
    )


def label_grid_problem(label: HeaderGrid, images: dict[str, HeaderGrid]) -> str | None:
    """A message when the label's grid equals none of the images' grids, else None.

    BraTS, MSD and nnU-Net labels live on the image grid. When a case's modalities are on
    different grids (clinical data), the label may sit on any one of them: the loaded label
    keeps its own affine, so later stages resample it correctly.
    """
    if not images or any(same_grid(label, g) for g in images.values()):
        return None
    ref_name, ref = next(iter(images.items()))
    diff = "shape" if label.shape != ref.shape else "affine"
    return (
        f"{label.path}: label grid does not match the image grid ({diff} differs): label shape "
        f"{label.shape} vs {ref_name} {ref.shape} ({ref.path}); max affine difference "
        f"{np.abs(label.affine - ref.affine).max():.4g} mm"
    )


def case_grids(
    case: Case, *, max_voxels: int = DEFAULT_MAX_VOXELS
) -> tuple[dict[str, HeaderGrid], HeaderGrid | None, list[str]]:
    """Read every header of a case: ``(image grids by modality, label grid, problems)``.

    A file that fails its header check is left out of the grids and reported in problems.
    For 4D files the channel count is checked against the channel indices the case uses.
    """
    problems: list[str] = []
    images: dict[str, HeaderGrid] = {}
    cache: dict[Path, HeaderGrid | None] = {}
    for modality, path in case.images.items():
        if path not in cache:
            try:
                cache[path] = read_grid(path, max_voxels=max_voxels, allow_4d=bool(case.channels))
            except ValueError as exc:
                problems.append(str(exc))
                cache[path] = None
        grid = cache[path]
        if grid is None:
            continue
        channel = case.channels.get(modality)
        if case.channels and grid.channels != case.n_channels:
            if channel == min(case.channels.values()):  # report a 4D file once, not per channel
                problems.append(
                    f"{path}: expected {case.n_channels} channels on the 4th axis, "
                    f"found {grid.channels}"
                )
            continue
        images[modality] = grid
    label = None
    if case.label is not None:
        try:
            label = read_grid(case.label, max_voxels=max_voxels)
        except ValueError as exc:
            problems.append(str(exc))
    return images, label, problems


def case_problems(
    case: Case,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> list[str]:
    """Everything wrong with a case that its headers reveal; an empty list means loadable.

    Checks: each expected modality present; each header valid (3D/4D, voxel cap, finite
    positive spacing, non-singular affine); 4D channel count; modalities overlapping in world
    space; the label on one of the image grids.
    """
    problems = [f"missing modality {m} (looked for {where})" for m, where in case.missing.items()]
    images, label, header_problems = case_grids(case, max_voxels=max_voxels)
    problems += header_problems
    overlap = overlap_problem(images, min_overlap)
    if overlap:
        problems.append(overlap)
    if label is not None:
        mismatch = label_grid_problem(label, images)
        if mismatch:
            problems.append(mismatch)
    return problems
