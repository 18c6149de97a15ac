"""Rigid (6 degrees of freedom) intensity-based co-registration with SimpleITK.

Co-registration by the headers' affines is exact when the patient did not move between series.
In native-space clinical data the series are often minutes to an hour apart and the head moves:
in TCGA-FG-6692 the T2/FLAIR series (22:26, 22:42) and the T1/T1ce series (23:11, 23:26) are
~2 cm apart in scanner space, so the lesion lands in different places after the affine step
alone. This module estimates the residual rigid motion of a moving modality against the
reference by Mattes mutual information (multi-modal), as BraTS's own pipeline does with ANTs/
CaPTk; we use SimpleITK because it is a maintained ITK wrapper with wheels for every platform.

The result is a world-space matrix ``W`` (4, 4): the point ``x`` (RAS mm) of the reference is
the point ``W @ x`` of the moving series. Preprocessing folds it into the moving series' affine
(``inv(W) @ A_moving``) so that each series is still interpolated only once, and the reference
grid, hence the inverse of preprocessing, is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from transmed.transforms import spatial


def _sitk():  # type: ignore[no-untyped-def]
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        raise ImportError("coregistration='rigid' needs SimpleITK (pip install SimpleITK)") from exc
    return sitk


def _to_image(array: np.ndarray, spacing: np.ndarray):  # type: ignore[no-untyped-def]
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32))
    image.SetSpacing([float(s) for s in spacing])
    return image


#: Below this correction (mm, mean displacement over the head) the headers are kept.
ALIGNED_MM = 1.0
#: Above this inverse-consistency residual (mm) the registration is refused.
MAX_RESIDUAL_MM = 3.0
#: A registration grid smaller than this along any axis is too small to check or register.
MIN_GRID_VOXELS = 16
#: Mattes mutual information (ITK's sign: negative, lower is better) above this after
#: registration means the series shares no structure with the reference.
MIN_INFORMATION = -0.05
#: A registration must improve the mutual information at the headers' alignment by at least
#: this much to count as evidence of motion.
MIN_GAIN = 1e-3


class RegistrationError(ValueError):
    """A series that cannot be registered to the reference; the message names it and why."""


@dataclass
class RegistrationResult:
    """One series registered to the reference (JSON-able through :meth:`summary`).

    Attributes:
        matrix: ``W`` (4, 4), reference world point ``x`` (mm) ↔ series world point ``W x``.
        method: ``"header"`` (headers kept: the check found no motion) or ``"rigid"``.
        metric_before / metric_after: Mattes MI at header alignment and after (lower = better).
        correction_mm: mean displacement (mm) ``W`` applies to the head (the header's error).
        residual_mm, residual_max_mm: mean and largest inverse-consistency error (mm) over the
            head; 0 for ``"header"``.
        seconds: wall time.
    """

    matrix: np.ndarray
    method: str
    metric_before: float
    metric_after: float
    correction_mm: float
    residual_mm: float
    residual_max_mm: float
    seconds: float
    reason: str = ""

    def summary(self) -> dict[str, object]:
        return {
            "method": self.method,
            "reason": self.reason,
            "world_transform": np.round(self.matrix, 6).tolist(),
            "translation_mm": np.round(self.matrix[:3, 3], 3).tolist(),
            "rotation_deg": round(rotation_degrees(self.matrix), 3),
            "metric_before": round(self.metric_before, 5),
            "metric_after": round(self.metric_after, 5),
            "correction_mm": round(self.correction_mm, 3),
            "residual_mm": round(self.residual_mm, 3),
            "residual_max_mm": round(self.residual_max_mm, 3),
            "seconds": round(self.seconds, 3),
        }


def rotation_degrees(matrix: np.ndarray) -> float:
    """Angle (degrees) of the rotation part of a rigid 4x4 matrix."""
    cos = (np.trace(np.asarray(matrix)[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def mask_points(mask: np.ndarray | None, shape: tuple[int, ...], grid_affine: np.ndarray,
                step: int = 2) -> np.ndarray:  # fmt: skip
    """World (mm) positions ``(N, 4)`` of every ``step``-th voxel of ``mask`` (the whole grid
    when ``mask`` is None or empty): the points whose displacement is measured."""
    if mask is None or not np.any(mask):
        mask = np.ones(shape, dtype=bool)
    sub = np.zeros(mask.shape, dtype=bool)
    sub[::step, ::step, ::step] = True
    idx = np.argwhere(mask & sub) if np.any(mask & sub) else np.argwhere(mask)
    homog = np.concatenate([idx.astype(np.float64), np.ones((len(idx), 1))], axis=1)
    return homog @ np.asarray(grid_affine, dtype=np.float64).T


def displacement_mm(matrix: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """Mean and largest distance (mm) that ``matrix`` moves ``points`` ``(N, 4)``."""
    moved = points @ np.asarray(matrix, dtype=np.float64).T
    dist = np.linalg.norm(moved[:, :3] - points[:, :3], axis=1)
    return float(dist.mean()), float(dist.max())


def _method(fixed_img, moving_img, mask_img, shrink, smooth, iterations):  # type: ignore[no-untyped-def]
    sitk = _sitk()
    reg = sitk.ImageRegistrationMethod()
    # ITK's multi-threaded metric sums in a varying order: one thread makes the result repeatable.
    reg.SetNumberOfThreads(1)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    # Every voxel: ITK's random sampling did not repeat with a fixed seed.
    reg.SetMetricSamplingStrategy(reg.NONE)
    if mask_img is not None:
        reg.SetMetricFixedMask(mask_img)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=4.0 if shrink[0] > 1 else 1.0, minStep=1e-3,
        numberOfIterations=iterations, relaxationFactor=0.6,
    )  # fmt: skip
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def _euler_to_world(transform, spacing: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """An ITK transform (fixed voxel-mm → moving voxel-mm) → world ``W`` (4, 4)."""
    sitk = _sitk()
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(0)
    euler = sitk.Euler3DTransform(transform)
    rot = np.asarray(euler.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(euler.GetCenter(), dtype=np.float64)
    trans = np.asarray(euler.GetTranslation(), dtype=np.float64)
    physical = np.eye(4)  # fixed voxel-mm -> moving voxel-mm
    physical[:3, :3] = rot
    physical[:3, 3] = centre + trans - rot @ centre
    to_mm = np.diag([*spacing, 1.0])  # voxel index -> voxel-mm
    return grid_affine @ np.linalg.inv(to_mm) @ physical @ to_mm @ np.linalg.inv(grid_affine)


def _world_to_euler(matrix: np.ndarray, spacing: np.ndarray, grid_affine: np.ndarray, centre):  # type: ignore[no-untyped-def]
    sitk = _sitk()
    to_mm = np.diag([*spacing, 1.0])
    physical = to_mm @ np.linalg.inv(grid_affine) @ matrix @ grid_affine @ np.linalg.inv(to_mm)
    euler = sitk.Euler3DTransform()
    euler.SetCenter([float(c) for c in centre])
    euler.SetMatrix([float(v) for v in physical[:3, :3].ravel()])
    rot = physical[:3, :3]
    c = np.asarray(centre, dtype=np.float64)
    euler.SetTranslation([float(v) for v in physical[:3, 3] - c + rot @ c])
    return euler


def _centre(image) -> list[float]:  # type: ignore[no-untyped-def]
    size = np.asarray(image.GetSize(), dtype=np.float64)
    return [float(v) for v in (size - 1) / 2 * np.asarray(image.GetSpacing())]


def _metric(fixed_img, moving_img, mask_img, transform) -> float:  # type: ignore[no-untyped-def]
    reg = _method(fixed_img, moving_img, mask_img, [1], [0.0], 1)
    reg.SetInitialTransform(transform, inPlace=False)
    return float(reg.MetricEvaluate(fixed_img, moving_img))


def _images(fixed: np.ndarray, moving: np.ndarray, grid_affine: np.ndarray,
            fixed_mask: np.ndarray | None) -> tuple[np.ndarray, Any, Any, Any]:  # fmt: skip
    """Voxel spacing, the two images and the fixed mask (``None`` when absent or empty) as
    SimpleITK images on the grid ``grid_affine``."""
    sitk = _sitk()
    spacing = np.linalg.norm(grid_affine[:3, :3], axis=0)
    mask_img = None
    if fixed_mask is not None and fixed_mask.any():
        mask_img = sitk.Cast(_to_image(fixed_mask.astype(np.uint8), spacing), sitk.sitkUInt8)
    return spacing, _to_image(fixed, spacing), _to_image(moving, spacing), mask_img


def rigid_register(
    fixed: np.ndarray,
    moving: np.ndarray,
    grid_affine: np.ndarray,
    *,
    fixed_mask: np.ndarray | None = None,
    iterations: int = 200,
) -> np.ndarray:
    """World-space rigid transform aligning ``moving`` to ``fixed`` (always registers).

    Args:
        fixed: ``(X, Y, Z)`` reference image.
        moving: ``(X, Y, Z)`` moving image already resampled (by header) onto the same grid.
        grid_affine: ``(4, 4)`` voxel-to-RAS affine of that grid; its columns must be orthogonal
            (a grid derived from a NIfTI qform is), so that rigid in voxel-mm is rigid in world.
        fixed_mask: optional boolean ``(X, Y, Z)`` region of the reference to match (the head).
        iterations: optimiser iterations per resolution level.

    Returns:
        ``W`` (4, 4): reference world point ``x`` (mm) corresponds to moving world point ``W x``.
    """
    sitk = _sitk()
    grid_affine = np.asarray(grid_affine, dtype=np.float64)
    spacing, fixed_img, moving_img, mask_img = _images(fixed, moving, grid_affine, fixed_mask)
    reg = _method(fixed_img, moving_img, mask_img, [4, 2, 1], [2.0, 1.0, 0.0], iterations)
    initial = sitk.CenteredTransformInitializer(
        fixed_img, moving_img, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY,
    )  # fmt: skip
    reg.SetInitialTransform(initial, inPlace=False)
    return _euler_to_world(reg.Execute(fixed_img, moving_img), spacing, grid_affine)


def coregister(
    fixed: np.ndarray,
    moving: np.ndarray,
    grid_affine: np.ndarray,
    *,
    fixed_mask: np.ndarray | None = None,
    force: bool = False,
    name: str = "series",
    iterations: int = 100,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` only when the evidence says the headers disagree.

    Args:
        fixed, moving, grid_affine, fixed_mask: as for :func:`rigid_register` (the moving image
            already resampled by its header onto the fixed grid; the mask: the brain).
        force: skip the check and always register (another FrameOfReferenceUID, or
            ``coregistration="rigid"``).
        name: the series' name for messages.
        iterations: optimiser iterations per level.

    Raises:
        RegistrationError: no shared information with the reference, or a residual above
            ``MAX_RESIDUAL_MM`` (the message names the series).
    """
    import time

    t0 = time.perf_counter()
    if min(fixed.shape) < MIN_GRID_VOXELS:
        if force:
            raise RegistrationError(
                f"{name}: cannot be registered: the image spans only {fixed.shape} voxels of "
                f"the registration grid (at least {MIN_GRID_VOXELS} per axis needed)"
            )
        return RegistrationResult(
            np.eye(4), "header", 0.0, 0.0, 0.0, 0.0, 0.0, time.perf_counter() - t0,
            reason=f"too small to check ({fixed.shape} voxels): headers kept",
        )  # fmt: skip
    try:
        return _coregister(fixed, moving, grid_affine, fixed_mask, force, name, iterations, t0)
    except RuntimeError as exc:  # ITK's exceptions (e.g. too few samples in the mask)
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RegistrationError(f"{name}: cannot be registered to the reference: {first}") from None


def _coregister(
    fixed: np.ndarray, moving: np.ndarray, grid_affine: np.ndarray,
    fixed_mask: np.ndarray | None, force: bool, name: str, iterations: int, t0: float,
) -> RegistrationResult:  # fmt: skip
    import time

    sitk = _sitk()
    grid_affine = np.asarray(grid_affine, dtype=np.float64)
    spacing, fixed_img, moving_img, mask_img = _images(fixed, moving, grid_affine, fixed_mask)
    points = mask_points(fixed_mask, fixed.shape, grid_affine)
    centre = _centre(fixed_img)
    identity = _world_to_euler(np.eye(4), spacing, grid_affine, centre)
    before = _metric(fixed_img, moving_img, mask_img, identity)

    # Coarse check (8 and 4 mm): cheap, and enough to see centimetre-scale head motion.
    coarse = _method(fixed_img, moving_img, mask_img, [4, 2], [2.0, 1.0], iterations)
    coarse.SetInitialTransform(identity, inPlace=False)
    w_coarse = _euler_to_world(coarse.Execute(fixed_img, moving_img), spacing, grid_affine)
    moved = displacement_mm(w_coarse, points)[0]
    # The optimiser can wander off from a correct start (large steps on a flat metric) and end
    # where the match is worse than the headers': that is no evidence of motion.
    coarse_after = _metric(fixed_img, moving_img, mask_img,
                           _world_to_euler(w_coarse, spacing, grid_affine, centre))  # fmt: skip
    worse = coarse_after > before - MIN_GAIN
    if not force and (moved < ALIGNED_MM or worse):
        if before > MIN_INFORMATION:
            raise RegistrationError(
                f"{name}: shares no information with the reference (mutual information "
                f"{before:.3f}); is it an image of the same head?"
            )
        if moved >= ALIGNED_MM:
            reason = (f"coarse registration moved the brain by {moved:.2f} mm but matched "
                      f"worse than the headers (mutual information {coarse_after:.3f} against "
                      f"{before:.3f}): headers kept")  # fmt: skip
        else:
            reason = f"coarse registration moved the brain by {moved:.2f} mm < {ALIGNED_MM} mm"
        return RegistrationResult(
            np.eye(4), "header", before, before, moved, 0.0, 0.0, time.perf_counter() - t0,
            reason=reason,
        )  # fmt: skip

    # Refine at the working resolution from the coarse result.
    fine = _method(fixed_img, moving_img, mask_img, [1], [0.0], iterations)
    fine.SetInitialTransform(_world_to_euler(w_coarse, spacing, grid_affine, centre),
                             inPlace=False)  # fmt: skip
    w = _euler_to_world(fine.Execute(fixed_img, moving_img), spacing, grid_affine)
    after = _metric(fixed_img, moving_img, mask_img,
                    _world_to_euler(w, spacing, grid_affine, centre))  # fmt: skip
    # Inverse consistency: register the reference to the series, started from inv(W); the
    # composition should be the identity. Its largest corner displacement is the residual.
    moving_mask = None
    if fixed_mask is not None and fixed_mask.any():  # the reference's mask carried onto the series
        to_series = np.linalg.inv(grid_affine) @ np.linalg.inv(w) @ grid_affine
        carried = spatial.resample_array(fixed_mask.astype(np.float32), to_series,
                                         fixed_mask.shape, order=1) > 0.5  # fmt: skip
        moving_mask = sitk.Cast(_to_image(carried.astype(np.uint8), spacing), sitk.sitkUInt8)
    back = _method(moving_img, fixed_img, moving_mask, [2, 1], [1.0, 0.0], iterations)
    back.SetInitialTransform(_world_to_euler(np.linalg.inv(w), spacing, grid_affine, centre),
                             inPlace=False)  # fmt: skip
    w_back = _euler_to_world(back.Execute(moving_img, fixed_img), spacing, grid_affine)
    residual, residual_max = displacement_mm(w_back @ w, points)
    result = RegistrationResult(
        w, "rigid", before, after, displacement_mm(w, points)[0], residual, residual_max,
        time.perf_counter() - t0,
        reason="forced (frame of reference or configuration)" if force else
        f"coarse registration moved the brain by {moved:.2f} mm >= {ALIGNED_MM} mm",
    )  # fmt: skip
    if not force and after > before - MIN_GAIN:  # refined into a worse match: keep headers
        return RegistrationResult(
            np.eye(4), "header", before, before, moved, 0.0, 0.0, time.perf_counter() - t0,
            reason=f"registration matched worse than the headers (mutual information "
            f"{after:.3f} against {before:.3f}): headers kept",
        )  # fmt: skip
    if after > MIN_INFORMATION:
        raise RegistrationError(
            f"{name}: cannot be registered to the reference: no shared information after "
            f"registration (mutual information {after:.3f})"
        )
    if residual > MAX_RESIDUAL_MM:
        raise RegistrationError(
            f"{name}: cannot be registered to the reference: the registration is not "
            f"consistent (residual {residual:.1f} mm > {MAX_RESIDUAL_MM} mm)"
        )
    return result
