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

import numpy as np


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


def rigid_register(
    fixed: np.ndarray,
    moving: np.ndarray,
    grid_affine: np.ndarray,
    *,
    fixed_mask: np.ndarray | None = None,
    iterations: int = 200,
) -> np.ndarray:
    """World-space rigid transform aligning ``moving`` to ``fixed``.

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
    spacing = np.linalg.norm(grid_affine[:3, :3], axis=0)
    fixed_img = _to_image(fixed, spacing)
    moving_img = _to_image(moving, spacing)

    reg = sitk.ImageRegistrationMethod()
    # ITK's multi-threaded metric sums in a varying order: one thread makes the result repeatable.
    reg.SetNumberOfThreads(1)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    # Every voxel of the 2 mm grid: ITK's random sampling did not repeat with a fixed seed.
    reg.SetMetricSamplingStrategy(reg.NONE)
    if fixed_mask is not None:
        mask = _to_image(fixed_mask.astype(np.uint8), spacing)
        reg.SetMetricFixedMask(sitk.Cast(mask, sitk.sitkUInt8))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=4.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    initial = sitk.CenteredTransformInitializer(
        fixed_img,
        moving_img,
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY,
    )
    reg.SetInitialTransform(initial, inPlace=False)
    transform = sitk.CompositeTransform(reg.Execute(fixed_img, moving_img)).GetNthTransform(0)
    euler = (
        sitk.Euler3DTransform(transform)
        if not isinstance(transform, sitk.Euler3DTransform)
        else transform
    )

    rot = np.asarray(euler.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(euler.GetCenter(), dtype=np.float64)
    trans = np.asarray(euler.GetTranslation(), dtype=np.float64)
    physical = np.eye(4)  # fixed voxel-mm -> moving voxel-mm
    physical[:3, :3] = rot
    physical[:3, 3] = centre + trans - rot @ centre
    to_mm = np.diag([*spacing, 1.0])  # voxel index -> voxel-mm
    return grid_affine @ np.linalg.inv(to_mm) @ physical @ to_mm @ np.linalg.inv(grid_affine)
