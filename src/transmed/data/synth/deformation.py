"""Per-subject spatial deformation: random affine + elastic field + tumour mass effect.

Everything is a *sampling* map: for each point ``p`` of the subject (output world, mm) it gives
the template point (MNI mm) whose anatomy appears at ``p``. It is drawn on the coarse grid of
:class:`~transmed.data.synth.anatomy.OutputGrid` (~4 mm) and interpolated trilinearly to the
voxels, which is exact for the affine part and accurate for the smooth parts.

Mass effect: around each tumour centre ``c`` the sampling point is pulled towards ``c``,
``p -> c + (p - c) (1 - k exp(-|p - c|^2 / 2 lambda^2))``, so the anatomy appears pushed away
from the tumour; with ``0 <= k < 1`` the map stays monotone along every ray (no folding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from transmed.data.synth.anatomy import BRAIN_CENTRE_MNI, OutputGrid


@dataclass(frozen=True)
class DeformationParams:
    """Random affine (about the template brain centre) and elastic-field parameters."""

    rotation_deg: tuple[float, float, float]  # about the x, y, z axes
    scale: tuple[float, float, float]  # template -> subject size factor per axis
    translation_mm: tuple[float, float, float]
    elastic_amplitude_mm: float  # RMS displacement of the elastic field
    elastic_smoothness_mm: float  # Gaussian sigma of the elastic field

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MassEffect:
    """Radial push of the anatomy away from ``centre_mm`` (subject world, mm)."""

    centre_mm: tuple[float, float, float]
    strength: float  # k in [0, 1): fraction by which nearby sampling points are pulled in
    reach_mm: float  # lambda: Gaussian decay length of the push


def sample_deformation(rng: np.random.Generator) -> DeformationParams:
    """Draw one subject's affine and elastic parameters.

    The overall scale 0.86-0.98 shrinks the template (the ICBM152 average brain is larger than
    most individual brains) so that it fits the 155 mm BraTS height with a margin.
    """
    rotation = rng.uniform(-8.0, 8.0, size=3)
    scale = rng.uniform(0.86, 0.98) * rng.uniform(0.96, 1.04, size=3)
    translation = rng.uniform(-4.0, 4.0, size=3)
    return DeformationParams(
        rotation_deg=tuple(float(v) for v in rotation),  # type: ignore[arg-type]
        scale=tuple(float(v) for v in scale),  # type: ignore[arg-type]
        translation_mm=tuple(float(v) for v in translation),  # type: ignore[arg-type]
        elastic_amplitude_mm=float(rng.uniform(1.0, 3.0)),
        elastic_smoothness_mm=float(rng.uniform(12.0, 24.0)),
    )


def rotation_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray | float
) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox)
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def sampling_field(
    grid: OutputGrid, params: DeformationParams, rng: np.random.Generator
) -> np.ndarray:
    """Template MNI mm sampled at each coarse node of ``grid``: (*coarse_shape, 3) float64.

    Affine: subject point ``p = c + t + R S (q - c)`` for template point ``q``; we store its
    inverse. Elastic: three smooth noise fields with RMS ``elastic_amplitude_mm``.
    """
    centre = np.asarray(BRAIN_CENTRE_MNI)
    forward = rotation_matrix(params.rotation_deg) @ np.diag(params.scale)
    p = grid.coarse_world().reshape(-1, 3)
    q = (p - centre - np.asarray(params.translation_mm)) @ np.linalg.inv(forward).T + centre
    q = q.reshape(*grid.coarse_shape, 3)
    sigma = params.elastic_smoothness_mm / grid.coarse_spacing
    for axis in range(3):
        q[..., axis] += params.elastic_amplitude_mm * smooth_noise(rng, grid.coarse_shape, sigma)
    return q


def apply_mass_effect(
    field: np.ndarray,
    grid: OutputGrid,
    effects: list[MassEffect],
    damping: np.ndarray | None = None,
) -> np.ndarray:
    """Compose the radial pushes of ``effects`` (in order) before the sampling ``field``.

    Args:
        field: (*coarse_shape, 3) template mm at each coarse node, from :func:`sampling_field`.
        damping: optional (*coarse_shape,) factor in [0, 1] on the push, e.g. 0 at the brain
            surface so the skull-bounded surface does not bulge (the tissue in between is
            compressed instead, like effaced sulci).
    Returns:
        The new (*coarse_shape, 3) field.
    """
    if not effects:
        return field
    p = grid.coarse_world().reshape(-1, 3)
    damp = 1.0 if damping is None else np.clip(damping.reshape(-1), 0.0, 1.0)
    for effect in effects:
        d = p - np.asarray(effect.centre_mm)
        r2 = np.einsum("ij,ij->i", d, d)
        pull = 1.0 - damp * effect.strength * np.exp(-r2 / (2.0 * effect.reach_mm**2))
        p = np.asarray(effect.centre_mm) + d * pull[:, None]
    idx = (grid.world_to_voxel(p) / np.asarray(grid.factor)).T
    out = np.stack(
        [ndi.map_coordinates(field[..., a], idx, order=1, mode="nearest") for a in range(3)],
        axis=-1,
    )
    return out.reshape(field.shape)
