"""Real anatomy for the synthetic cohort: the MNI ICBM152 2009a template and its tissue maps.

The nilearn wheel ships the 1 mm symmetric ICBM152 2009a T1 template and its grey- and
white-matter probability maps (197 x 233 x 189 voxels, uint8 0-255, RAS affine, MNI mm), so no
download is needed. From them we derive, once per process:

- a brain mask: ``GM + WM > 0.1`` or ``T1 > 0.05`` (the template is already skull-stripped),
  closed and hole-filled, so the ventricles and the sulcal CSF are inside it;
- CSF = clip(mask - GM - WM, 0, 1) (computed where sampled, not stored);
- ``depth``: distance to the brain surface in mm (clipped at 40 mm), used to place tumours away
  from the surface and to draw a dura-like bright rim on T1ce;
- ``periventricular``: the ventricles (deep CSF) blurred by 3 mm, for choroid plexus and normal
  periventricular FLAIR hyperintensity.

Output geometry (:class:`OutputGrid`): the BraTS 2021 field of view, 240 x 240 x 155 mm, in the
BraTS voxel order (array axes point to patient Left, Posterior, Superior, i.e. affine
``diag(-sx, -sy, +sz)``, as in the BraTS 2021 files). World coordinates are MNI mm before the
per-subject deformation (grid centre at :data:`GRID_CENTRE_MNI`). A shape other than
240 x 240 x 155 keeps the field of view and changes the voxel size to ``FOV / shape`` per axis
(``--shape 64 64 48`` -> 3.75 x 3.75 x 3.23 mm): always a whole brain, at coarser resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

#: Field of view of the BraTS 2021 grid in mm (x, y, z); a requested shape divides it.
BRATS_FOV_MM: tuple[float, float, float] = (240.0, 240.0, 155.0)
#: World (MNI mm) coordinate of the output grid centre; leaves a margin above the vertex.
GRID_CENTRE_MNI: tuple[float, float, float] = (0.0, -18.0, 8.0)
#: Pivot of the per-subject affine: centre of the template brain's bounding box (MNI mm).
BRAIN_CENTRE_MNI: tuple[float, float, float] = (0.0, -16.5, 6.0)
#: Channels of :attr:`Template.data`, in order.
TEMPLATE_CHANNELS: tuple[str, ...] = ("gm", "wm", "mask", "depth", "periventricular")
#: Coarse grid step for smooth per-subject fields (deformation, bias, texture), in mm.
COARSE_STEP_MM = 4.0

_TEMPLATE_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_TEMPLATE_SHAPE = (197, 233, 189)


@dataclass(frozen=True)
class Template:
    """The derived template maps; ``data[c]`` is channel ``TEMPLATE_CHANNELS[c]``."""

    data: np.ndarray  # (5, 197, 233, 189) float32: gm, wm, mask in [0, 1]; depth mm; pv in [0, 1]
    affine: np.ndarray  # (4, 4) template voxel -> MNI mm (RAS+)

    @property
    def inv_affine(self) -> np.ndarray:
        return np.linalg.inv(self.affine)


@dataclass(frozen=True)
class OutputGrid:
    """The output voxel grid and the coarse grid on which smooth fields are drawn.

    Coarse node ``k`` along axis ``a`` sits on output voxel ``k * factor[a]``; the last node is
    at or beyond the last voxel, so trilinear interpolation covers the whole grid.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray  # (4, 4) output voxel -> world mm (RAS+), BraTS axis directions
    factor: tuple[int, int, int]  # coarse step in output voxels
    coarse_shape: tuple[int, int, int]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm per array axis."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def coarse_spacing(self) -> np.ndarray:
        """Coarse node spacing in mm per axis, shape (3,)."""
        return np.asarray(self.spacing) * np.asarray(self.factor)

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) voxel indices to (N, 3) world mm (float32)."""
        return apply_affine(self.affine, ijk)

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Map (N, 3) world mm to (N, 3) fractional voxel indices (float32)."""
        return apply_affine(np.linalg.inv(self.affine), xyz)

    def coarse_world(self) -> np.ndarray:
        """World mm of every coarse node, shape (*coarse_shape, 3) float64 (axis-aligned grid)."""
        axes = [
            self.affine[a, a] * np.arange(n) * f + self.affine[a, 3]
            for a, (n, f) in enumerate(zip(self.coarse_shape, self.factor, strict=True))
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def output_grid(shape: tuple[int, int, int]) -> OutputGrid:
    """The output grid for ``shape`` (D, H, W) covering the BraTS field of view.

    Raises:
        ValueError: a side outside [16, 512].
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or any(s < 16 or s > 512 for s in shape):
        raise ValueError(f"shape must be three sides in [16, 512] voxels, got {shape}")
    spacing = np.asarray(BRATS_FOV_MM) / np.asarray(shape)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    centre_vox = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = np.asarray(GRID_CENTRE_MNI) - affine[:3, :3] @ centre_vox
    factor = tuple(max(1, int(round(COARSE_STEP_MM / s))) for s in spacing)
    coarse = tuple(int(np.ceil((n - 1) / f)) + 1 for n, f in zip(shape, factor, strict=True))
    return OutputGrid(shape=shape, affine=affine, factor=factor, coarse_shape=coarse)  # type: ignore[arg-type]


def template_dir() -> Path:
    """Folder of the MNI template files inside the installed nilearn wheel."""
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def _read_map(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = template_dir() / _TEMPLATE_NAME.format(name)
    if not path.is_file():
        raise ValueError(f"{path}: MNI template file missing from the nilearn wheel")
    img = nib.load(str(path))
    if tuple(img.shape) != _TEMPLATE_SHAPE:
        raise ValueError(f"{path}: expected shape {_TEMPLATE_SHAPE}, got {img.shape}")
    if not np.allclose(np.abs(np.diag(img.affine)[:3]), 1.0):
        raise ValueError(f"{path}: expected 1 mm voxels, affine diagonal {np.diag(img.affine)}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    scale = 255.0 if data.max() > 1.5 else 1.0  # shipped as uint8 0-255
    return data / scale, np.asarray(img.affine, dtype=np.float64)


_CACHE: dict[tuple[float, float, float], Template] = {}


def _cache_key(spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(round(float(s), 4) for s in spacing_mm)  # type: ignore[return-value]


def preload_template(spacing_mm: tuple[float, float, float], template: Template) -> None:
    """Register an already derived template (e.g. handed to a worker process) in the cache."""
    _CACHE[_cache_key(spacing_mm)] = template


def load_template(spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Template:
    """Load and derive the template maps, anti-aliased for an output of ``spacing_mm``.

    When the output voxels are coarser than 1.5 mm the maps are smoothed with a Gaussian of
    sigma = 0.42 x spacing (per axis) so point-sampling them does not alias. Cached per spacing
    in this process (~5 s of CPU to derive at 1 mm).
    """
    key = _cache_key(spacing_mm)
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _derive_template(key)
    return _CACHE[key]


def _crop_to_head(
    volumes: list[np.ndarray], affine: np.ndarray, margin: int = 4
) -> tuple[list[np.ndarray], np.ndarray]:
    """Crop to the bounding box of non-zero template voxels (+ margin); shift the affine."""
    nonzero = np.argwhere(np.any(np.stack([v > 0.01 for v in volumes]), axis=0))
    lo = np.maximum(nonzero.min(axis=0) - margin, 0)
    hi = np.minimum(nonzero.max(axis=0) + margin + 1, volumes[0].shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return [v[box] for v in volumes], shifted


def _block_mean(data: np.ndarray, affine: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Average (C, X, Y, Z) over factor^3 blocks; the affine follows the block centres."""
    c, *shape = data.shape
    n = [s // factor for s in shape]
    blocks = data[:, : n[0] * factor, : n[1] * factor, : n[2] * factor]
    blocks = blocks.reshape(c, n[0], factor, n[1], factor, n[2], factor).mean(axis=(2, 4, 6))
    scaled = affine.copy()
    scaled[:3, :3] = affine[:3, :3] * factor
    scaled[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2.0) + affine[:3, 3]
    return blocks.astype(np.float32), scaled


def _derive_template(spacing_mm: tuple[float, float, float]) -> Template:
    t1, affine = _read_map("t1")
    gm, aff_gm = _read_map("gm")
    wm, aff_wm = _read_map("wm")
    if not (np.allclose(affine, aff_gm) and np.allclose(affine, aff_wm)):
        raise ValueError(f"{template_dir()}: the T1, GM and WM template affines differ")
    # outside this box everything is 0, which is also what sampling returns outside the volume
    (t1, gm, wm), affine = _crop_to_head([t1, gm, wm], affine)
    mask = ndi.binary_fill_holes(ndi.binary_closing((gm + wm > 0.1) | (t1 > 0.05)))
    depth = ndi.distance_transform_edt(mask).astype(np.float32)
    np.minimum(depth, 40.0, out=depth)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    deep_csf = (csf > 0.5) & (depth > 10.0)
    labels, _ = ndi.label(deep_csf)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    ventricles = np.isin(labels, np.flatnonzero(sizes > 1000))  # drop small deep sulci
    pv = ndi.gaussian_filter(ventricles.astype(np.float32), 3.0)
    data = np.stack([gm, wm, mask.astype(np.float32), depth, pv]).astype(np.float32)
    factor = int(round(min(spacing_mm) / 2.0))
    if factor >= 2:  # coarse output: average blocks first, so smoothing below is cheap
        data, affine = _block_mean(data, affine, factor)
    if max(spacing_mm) > 1.5:
        # target Gaussian sigma 0.42 x spacing (mm), less the block average's own blur
        # (a box of f mm has variance f^2 / 12), in units of the (block) voxels
        block_var = factor**2 / 12.0 if factor >= 2 else 0.0
        step = max(factor, 1)
        sigma = [np.sqrt(max((0.42 * s) ** 2 - block_var, 0.0)) / step for s in spacing_mm]
        for c in range(data.shape[0]):
            data[c] = ndi.gaussian_filter(data[c], sigma, truncate=3.0)
    return Template(data=np.ascontiguousarray(data), affine=affine)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 3) points through a (4, 4) affine, in float32.

    Written column by column because ``(N, 3) @ (3, 3)`` in numpy is several times slower.
    """
    a = np.asarray(affine, dtype=np.float32)
    pts = np.asarray(points, dtype=np.float32)
    out = np.empty_like(pts)
    for r in range(3):
        out[:, r] = a[r, 3] + pts[:, 0] * a[r, 0] + pts[:, 1] * a[r, 1] + pts[:, 2] * a[r, 2]
    return out


def sample_points(
    volume: np.ndarray, coords: np.ndarray, *, border: bool = False, chunk: int = 4_000_000
) -> np.ndarray:
    """Trilinear interpolation of a (C, X, Y, Z) volume at (N, 3) fractional voxel indices.

    Uses ``torch.nn.functional.grid_sample`` rather than ``scipy.ndimage.map_coordinates``:
    it shares the coordinate arithmetic across channels and is ~3x faster per channel on CPU.
    Outside the volume the value is 0, or the nearest border value when ``border``.

    Returns:
        (C, N) float32.
    """
    import torch

    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
    size = np.asarray(volume.shape[1:], dtype=np.float32)
    # grid_sample's last grid axis is (W, H, D) = (z, y, x), normalised to [-1, 1]
    scale = (2.0 / np.maximum(size - 1, 1))[::-1].copy()
    out = np.empty((volume.shape[0], coords.shape[0]), dtype=np.float32)
    for start in range(0, coords.shape[0], chunk):
        part = np.asarray(coords[start : start + chunk, ::-1], dtype=np.float32) * scale - 1.0
        grid = torch.from_numpy(part).view(1, -1, 1, 1, 3)
        res = torch.nn.functional.grid_sample(
            vol,
            grid,
            mode="bilinear",
            padding_mode="border" if border else "zeros",
            align_corners=True,
        )
        out[:, start : start + chunk] = res[0, :, :, 0, 0].numpy()
    return out
