"""The generator's label maps: deformed MNI anatomy + tumours, with room for a head around it.

Each map comes from :func:`transmed.data.synth.case.generate_case` (``tumour_style="varied"``)
at the working spacing, keeps its fine classes (CSF, GM, WM, necrosis, non-enhancing tumour,
enhancing tumour, oedema, bright normal structures, white-matter hyperintensities), is padded
so a skull and scalp fit around the brain, and carries the Euclidean distance (mm) from the
brain, from which :mod:`.sample` grows extra-cerebral layers of random thickness.

Maps are identified by ``(seed, index)`` and cached as ``.npz`` in a folder, so a resumed run
and every data-loader worker read the same maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from transmed.data.synth.anatomy import BRATS_FOV_MM
from transmed.data.synth.case import SynthConfig, generate_case
from transmed.io.atomic import atomic_write

#: Tumour mix of the generator's maps (see ``sample_tumours_varied``).
VARIED = SynthConfig(tumour_free_prob=0.05, multifocal_prob=0.15, tumour_style="varied")
#: Voxels of padding on each side (array axes), room for skull and scalp (~20 mm at 1.5 mm).
PAD_MM = 21.0
MAX_DIST_MM = 40.0
#: Thickness (mm) of the shell outside the brain that hard-negative patches centre on.
LOOKALIKE_SHELL_MM = 4.0


@dataclass
class LabelMap:
    """One padded label map; array axes point to patient L, P, S (BraTS voxel order)."""

    fine: np.ndarray  # (X, Y, Z) uint8 FINE_CLASSES, 0 outside the brain
    dist: np.ndarray  # (X, Y, Z) float32 mm from the brain (0 inside), clipped at MAX_DIST_MM
    spacing: float  # mm, isotropic (the FOV divided by the shape, within 1 %)
    key: tuple[int, int]

    def __post_init__(self) -> None:
        self.dist = np.asarray(self.dist, dtype=np.float32)  # stored as float16 on disk
        #: flat indices of tumour voxels (fine classes 4-7), for foreground patches
        self.tumour_voxels = np.flatnonzero((self.fine >= 4) & (self.fine <= 7))
        #: flat indices of brain voxels on the every-other-voxel grid, for other patches
        self.brain_voxels_half = np.flatnonzero(self.fine[::2, ::2, ::2])
        self._lookalike: tuple[np.ndarray, np.ndarray] | None = None

    def lookalike_voxels_half(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices, on the every-other-voxel grid, of where normal anatomy looks most
        like tumour: the bright normal structures inside the brain (vessels, choroid plexus;
        fine class 8) and the shell within ``LOOKALIKE_SHELL_MM`` outside the brain (meninges,
        where dura, sinuses and cortical veins enhance; the skull base). Computed on first
        use (hard-negative patches, ``GeneratorConfig.hard_negative_prob``)."""
        if self._lookalike is None:
            fine = self.fine[::2, ::2, ::2]
            dist = self.dist[::2, ::2, ::2]
            bright = np.flatnonzero(fine == 8)
            shell = np.flatnonzero((fine == 0) & (dist > 0) & (dist <= LOOKALIKE_SHELL_MM))
            self._lookalike = (bright, shell)
        return self._lookalike


def labelmap_shape(spacing: float) -> tuple[int, int, int]:
    """Shape of the synthetic grid covering the BraTS field of view at ``spacing`` mm."""
    if not 0.5 <= spacing <= 4.0:
        raise ValueError(f"working spacing must be in [0.5, 4] mm, got {spacing}")
    return tuple(int(round(f / spacing)) for f in BRATS_FOV_MM)  # type: ignore[return-value]


def make_labelmap(seed: int, index: int, spacing: float = 1.5) -> LabelMap:
    """Generate map ``index`` of the pool ``seed`` (deterministic)."""
    case = generate_case(seed, index, labelmap_shape(spacing), VARIED)
    pad = int(round(PAD_MM / spacing))
    fine = np.pad(case.fine, pad)
    dist = ndi.distance_transform_edt(fine == 0, sampling=spacing)
    np.minimum(dist, MAX_DIST_MM, out=dist)
    return LabelMap(fine=fine, dist=dist, spacing=spacing, key=(seed, index))


class LabelMapPool:
    """``size`` label maps of pool ``seed``, generated on first use and cached in ``folder``."""

    def __init__(self, folder: Path | None, size: int, seed: int = 0, spacing: float = 1.5,
                 memory_items: int = 256) -> None:  # fmt: skip
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        self.folder = Path(folder) if folder is not None else None
        self.size, self.seed, self.spacing = int(size), int(seed), float(spacing)
        self._memory: dict[int, LabelMap] = {}
        self._memory_items = memory_items

    def __len__(self) -> int:
        return self.size

    def _path(self, index: int) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"map_s{self.seed}_i{index:05d}_{self.spacing:g}mm.npz"

    def get(self, index: int) -> LabelMap:
        if not 0 <= index < self.size:
            raise ValueError(f"label map index {index} outside the pool of {self.size}")
        if index in self._memory:
            return self._memory[index]
        path = self._path(index)
        lm = None
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    lm = LabelMap(z["fine"], z["dist"], self.spacing, (self.seed, index))
            except (OSError, ValueError, KeyError):
                lm = None  # a damaged cache entry is regenerated
        if lm is None:
            lm = make_labelmap(self.seed, index, self.spacing)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                arrays = {"fine": lm.fine, "dist": lm.dist.astype(np.float16)}
                atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays), ".npz")
        if len(self._memory) < self._memory_items:
            self._memory[index] = lm
        return lm

    def build(self, progress: bool = True) -> None:
        """Generate (or load) every map now, with a progress bar."""
        from transmed.progress import progress_bar

        maps = progress_bar(range(self.size), desc="label maps", disable=not progress, unit="map")
        for i in maps:
            self.get(i)
