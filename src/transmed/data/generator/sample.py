"""One training pair from a label map: a pure function of the label map and an RNG.

Steps (all parameters drawn from ``rng``, recorded in the returned ``info``):

1. **geometry**: a patch centred on tumour (``foreground_prob``), on a tumour look-alike
   (``hard_negative_prob``: bright normal structures, meninges, skull base) or anywhere in the
   brain, with
   a random rotation (±``rotation_deg`` about each axis) and scale; fine labels are sampled by
   nearest neighbour, the distance from the brain trilinearly; the array is put in RAS order
   (the maps are L, P, S) and mirrored left-right half of the time;
2. **head**: extra-cerebral layers grown outside the brain by that distance, with thicknesses
   modulated by a smooth field: CSF/meninges, skull (with fatty marrow), subcutaneous fat and
   scalp; beyond them air. In most heads, patches of the meningeal layer where that field
   peaks become the "bright" class (enhancing dura, dural sinuses, cortical veins: bright on
   T1ce like enhancing tumour, but not tumour);
3. **appearance**: class means and spreads from :func:`.appearance.draw_appearance`, a smooth
   multiplicative bias field per modality, a gamma per modality;
4. **resolution** per modality: native (a small partial-volume blur), thick slices along a
   random axis (3-7.5 mm: Gaussian slice profile, down-sampled then linearly up-sampled back,
   as resampling a 2D acquisition onto the working grid does), or low isotropic resolution;
5. **noise**: Rician, also in the air;
6. **skull**: kept (the image is z-scored over the head, as preprocessing does without brain
   extraction) or stripped (zero outside a brain mask grown by 0-3 mm, as an imperfect brain
   extraction leaves it; z-scored over that mask);
7. **z-score statistics** from the *whole* head or brain, not the patch, so a patch full of
   tumour is normalised as the whole case is at inference. For a whole case they are exact.
   For a patch they are estimated on every third voxel of the full map with the same draws;
   the mean is within a few % of the exact one, but the std is over-estimated by 0-50 %
   (measured on whole cases: the resolution model blurs away thin bright structures and
   texture that the strided estimate keeps), so patches are then multiplied by a random
   contrast factor U(1.0, 1.6) (and shifted by N(0, 0.1)), which brackets the exact
   normalisation that inference applies;
8. **modality dropout**: T1, T2 and/or FLAIR set to 0 (the z-scored mean), T1ce always kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from transmed.data.generator.appearance import draw_appearance
from transmed.data.generator.labelmaps import LabelMap
from transmed.data.synth.anatomy import sample_points
from transmed.data.synth.deformation import rotation_matrix

#: Modality dropout patterns (indices into T1, T1ce, T2, FLAIR) and their probabilities.
DROPOUT_PATTERNS: tuple[tuple[int, ...], ...] = ((0,), (2,), (0, 2), (3,), (0, 2, 3))
DROPOUT_WEIGHTS = (0.3, 0.2, 0.25, 0.1, 0.15)
_COARSE = 6  # nodes per axis of the smooth fields (bias, layer thickness)


@dataclass(frozen=True)
class GeneratorConfig:
    """Ranges of the random draws (mm, probabilities)."""

    patch_size: tuple[int, int, int] = (64, 64, 64)
    foreground_prob: float = 0.6
    skull_prob: float = 0.5
    extraction_error_mm: float = 3.0
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    random_contrast_prob: float = 0.15
    #: random contrast draws keep the relations that define the tumour compartments against
    #: normal parenchyma (``appearance.RANDOM_CAPS``). False keeps the draws of runs made
    #: before the option existed (the same random numbers are consumed either way).
    random_keeps_relations: bool = False
    contrast_jitter: float = 0.15
    thick_slice_prob: float = 0.45
    slice_mm: tuple[float, float] = (3.0, 7.5)
    lowres_prob: float = 0.15
    lowres_mm: tuple[float, float] = (2.0, 3.5)
    bias_max: float = 0.35
    noise_max: float = 0.06
    gamma_std: float = 0.25
    dropout_prob: float = 0.35
    #: patches whose tumour is replaced by the surrounding normal tissue (label all 0): brains
    #: with no tumour, so that normal bright structures are seen without a tumour beside them.
    #: 0 keeps the draws of runs made before the option existed (no extra random draw).
    tumour_free_prob: float = 0.0
    #: patches not centred on tumour that are centred instead where normal anatomy looks
    #: most like tumour (half on bright normal structures inside the brain, half on the
    #: meningeal shell and skull base; ``LabelMap.lookalike_voxels_half``): hard negatives.
    #: 0 keeps the draws of runs made before the option existed (no extra random draw).
    hard_negative_prob: float = 0.0
    #: heads whose meningeal layer has patches of the "bright" class (enhancing dura, dural
    #: sinuses, cortical veins; added in stage 2). 0 gives stage 1's heads (for a baseline
    #: trained with stage 1's recipe); the default 0.7 keeps the draws of every later stage.
    dura_prob: float = 0.7

    def __post_init__(self) -> None:
        for name in ("foreground_prob", "skull_prob", "random_contrast_prob", "thick_slice_prob",
                     "lowres_prob", "dropout_prob", "tumour_free_prob",
                     "hard_negative_prob", "dura_prob"):  # fmt: skip
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"GeneratorConfig.{name} must be in [0, 1], got {v}")
        if not isinstance(self.random_keeps_relations, bool):
            raise ValueError("GeneratorConfig.random_keeps_relations must be true or false, got "
                             f"{self.random_keeps_relations!r}")
        if self.thick_slice_prob + self.lowres_prob > 1.0:
            raise ValueError("GeneratorConfig: thick_slice_prob + lowres_prob must be <= 1")
        if any(int(p) < 16 for p in self.patch_size) or len(self.patch_size) != 3:
            raise ValueError(f"patch_size must be three sides >= 16, got {self.patch_size}")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fine_to_regions(fine: np.ndarray) -> np.ndarray:
    """(…) fine classes -> (3, …) float32 region masks WT, TC, ET."""
    wt = (fine >= 4) & (fine <= 7)
    tc = (fine >= 4) & (fine <= 6)
    return np.stack([wt, tc, fine == 6]).astype(np.float32)


def fine_to_internal(fine: np.ndarray) -> np.ndarray:
    """Fine classes -> internal labels (0 bg, 1 necrosis/non-enhancing, 2 oedema, 3 ET)."""
    lut = np.zeros(256, np.uint8)
    lut[[4, 5]] = 1
    lut[7] = 2
    lut[6] = 3
    return lut[fine]


def erase_tumour(fine: np.ndarray) -> np.ndarray:
    """(*S) fine classes -> a copy whose tumour voxels (classes 4-7) take the class of the
    nearest normal brain voxel (CSF, GM, WM, bright, WMH): the same anatomy, mass effect
    included, without a tumour. Unchanged when the array holds no normal brain voxel."""
    tumour = (fine >= 4) & (fine <= 7)
    normal = (fine > 0) & ~tumour
    if not tumour.any() or not normal.any():
        return fine.copy()
    idx = ndi.distance_transform_edt(~normal, return_distances=False, return_indices=True)
    out = fine.copy()
    out[tumour] = fine[tuple(i[tumour] for i in idx)]
    return out


def _layers(fine: np.ndarray, dist: np.ndarray, mod: np.ndarray, t: dict[str, float]) -> np.ndarray:
    """Generator classes: brain classes as they are, extra-cerebral layers by distance (mm)."""
    out = fine.astype(np.uint8, copy=True)
    outside = fine == 0
    d = dist / np.clip(mod, 0.5, 1.5)
    a1 = t["csf"]
    a2 = a1 + t["skull"]
    a3 = a2 + t["fat"]
    a4 = a3 + t["scalp"]
    layer = np.zeros(d.shape, np.uint8)
    layer[d <= a4] = 13
    layer[d <= a3] = 14
    layer[d <= a2] = 11
    if t["marrow"]:
        lo, hi = a1 + t["skull"] * t["marrow_lo"], a1 + t["skull"] * t["marrow_hi"]
        layer[(d > lo) & (d < hi)] = 12
    layer[d <= a1] = 10
    # enhancing dura, dural sinuses and cortical veins: bright on T1ce like enhancing tumour,
    # outside the brain, where smooth-field peaks cross the meningeal layer
    if np.isfinite(t.get("dura", np.inf)):
        layer[(layer == 10) & (mod > 1.0 + t["dura"])] = 8
    out[outside] = layer[outside]
    return out


def _gauss_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    return k / k.sum()


def _blur(vol: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of a (D, H, W) tensor (replicate padding); sigma in voxels."""
    x = vol[None, None]
    for axis, s in enumerate(sigmas):
        if s < 0.2:
            continue
        k = _gauss_kernel(s)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        r = k.numel() // 2
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x[0, 0]


def _degrade(vol: torch.Tensor, factors: tuple[float, float, float],
             sigmas: tuple[float, float, float]) -> torch.Tensor:  # fmt: skip
    """Blur, down-sample by ``factors`` (voxels of the acquisition per working voxel), and
    up-sample back linearly: what resampling a coarser acquisition onto the grid gives."""
    out = _blur(vol, sigmas)
    if max(factors) <= 1.05:
        return out
    size = [max(2, int(round(n / f))) for n, f in zip(vol.shape, factors, strict=True)]
    low = F.interpolate(out[None, None], size=size, mode="trilinear", align_corners=False)
    return F.interpolate(low, size=tuple(vol.shape), mode="trilinear", align_corners=False)[0, 0]


def _draw_params(rng: np.random.Generator, cfg: GeneratorConfig) -> dict[str, Any]:
    means, spread, kinds = draw_appearance(rng, cfg.contrast_jitter, cfg.random_contrast_prob,
                                           cfg.random_keeps_relations)
    marrow = bool(rng.uniform() < 0.8)
    lo = float(rng.uniform(0.2, 0.4))
    p: dict[str, Any] = {
        "means": means, "spread": spread, "contrast_kind": kinds,
        "layers": {"csf": float(rng.uniform(0.5, 3.0)), "skull": float(rng.uniform(3.5, 8.0)),
                   "fat": float(rng.uniform(0.5, 5.0)), "scalp": float(rng.uniform(2.0, 6.0)),
                   "marrow": marrow, "marrow_lo": lo,
                   "marrow_hi": lo + float(rng.uniform(0.2, 0.4)),
                   "dura": float(rng.uniform(0.05, 0.6))
                   if rng.uniform() < cfg.dura_prob else np.inf},
        "layer_noise": float(rng.uniform(0.1, 0.35)),
        "coarse": rng.standard_normal((5, _COARSE, _COARSE, _COARSE)).astype(np.float32),
        "bias": rng.uniform(0.0, cfg.bias_max, 4).astype(np.float32),
        "gamma": np.exp(rng.normal(0.0, cfg.gamma_std, 4)).astype(np.float32),
        "noise": rng.uniform(0.005, cfg.noise_max, 4).astype(np.float32),
        "contrast": rng.uniform(1.0, 1.6, 4).astype(np.float32),
        "shift": rng.normal(0.0, 0.1, 4).astype(np.float32),
        "skull_on": bool(rng.uniform() < cfg.skull_prob),
        "extraction_mm": float(rng.uniform(0.0, cfg.extraction_error_mm))
        if rng.uniform() < 0.5 else 0.0,
    }  # fmt: skip
    res = []
    for _ in range(4):
        u = rng.uniform()
        if u < cfg.thick_slice_prob:
            res.append(("thick", int(rng.integers(3)), float(rng.uniform(*cfg.slice_mm))))
        elif u < cfg.thick_slice_prob + cfg.lowres_prob:
            res.append(("lowres", -1, float(rng.uniform(*cfg.lowres_mm))))
        else:
            res.append(("native", -1, float(rng.uniform(0.3, 0.7))))
    p["resolution"] = res
    dropped: tuple[int, ...] = ()
    if rng.uniform() < cfg.dropout_prob:
        dropped = DROPOUT_PATTERNS[int(rng.choice(len(DROPOUT_PATTERNS), p=DROPOUT_WEIGHTS))]
    p["dropped"] = dropped
    return p


def _intensities(lab: np.ndarray, fields: np.ndarray, p: dict[str, Any],
                 rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """(N,) generator classes and (5, N) smooth fields -> (4, N) intensities before the
    resolution model: class means (after this image's gamma) with their spread, times the
    bias field."""
    means, spread = p["means"], p["spread"]
    ref = means.max(axis=0, keepdims=True)
    means = (np.power(means / ref, p["gamma"][None, :]) * ref).astype(np.float32)
    img = rng.standard_normal((4, lab.size), dtype=np.float32)
    img *= spread.T[:, lab]
    img += 1.0
    img *= means.T[:, lab]
    img *= np.exp(p["bias"][:, None] * fields[1:5])
    return img


def _rician(img: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (std ``sigma`` per modality)."""
    s = sigma.reshape(-1, *([1] * (img.ndim - 1)))
    real = rng.standard_normal(img.shape, dtype=np.float32)
    real *= s
    real += img
    imag = rng.standard_normal(img.shape, dtype=np.float32)
    imag *= s
    np.multiply(real, real, out=real)
    np.multiply(imag, imag, out=imag)
    real += imag
    return np.sqrt(real, out=real)


def _resolution(vol: torch.Tensor, spec: tuple[str, int, float], spacing: float) -> torch.Tensor:
    """Apply one modality's resolution model to a (D, H, W) tensor."""
    kind, axis, mm = spec
    if kind == "native":
        return _blur(vol, (mm, mm, mm))
    if kind == "thick":
        f = [1.0, 1.0, 1.0]
        f[axis] = mm / spacing
        sig = [0.4, 0.4, 0.4]
        sig[axis] = 0.35 * f[axis]
        return _degrade(vol, tuple(f), tuple(sig))  # type: ignore[arg-type]
    f = mm / spacing
    return _degrade(vol, (f, f, f), (0.35 * f,) * 3)


_PROBE = np.random.default_rng(12345).standard_normal((40, 40, 40)).astype(np.float32)


def _attenuation(spec: tuple[str, int, float], spacing: float) -> float:
    """Variance ratio of white noise after the resolution model (the centre of a probe)."""
    out = _resolution(torch.from_numpy(_PROBE), spec, spacing).numpy()[8:-8, 8:-8, 8:-8]
    return float(out.var() / _PROBE[8:-8, 8:-8, 8:-8].var())


def _stats(lm: LabelMap, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Expected mean and std per modality over the whole head (skull on) or brain mask
    (stripped), as z-scoring the whole generated case at inference would measure them.

    From every third voxel of the map with this image's draws: the variance of the class
    means (with bias and gamma), plus the within-class spread attenuated by the modality's
    resolution model (measured on a white-noise probe), plus the Rician noise variance.
    """
    sub = (slice(1, None, 3),) * 3
    fine, dist = lm.fine[sub], lm.dist[sub]
    fields = F.interpolate(torch.from_numpy(p["coarse"][None]), size=fine.shape,
                           mode="trilinear", align_corners=True)[0].reshape(5, -1).numpy()
    lab = _layers(fine.ravel(), dist.ravel(), 1.0 + p["layer_noise"] * fields[0], p["layers"])
    mask = _mask(lab, fine.ravel(), dist.ravel(), p)
    lab, fields = lab[mask], fields[:, mask]
    means, spread = p["means"], p["spread"]
    ref = means.max(axis=0, keepdims=True)
    means = (np.power(means / ref, p["gamma"][None, :]) * ref).astype(np.float32)
    mu = means.T[:, lab] * np.exp(p["bias"][:, None] * fields[1:5])  # (4, N)
    texture = ((spread.T[:, lab] * mu) ** 2).mean(axis=1)
    atten = np.array([_attenuation(tuple(r), lm.spacing) for r in p["resolution"]])
    var = mu.var(axis=1) + atten * texture + p["noise"] ** 2
    return mu.mean(axis=1), np.sqrt(np.maximum(var, 1e-12))


def _mask(lab: np.ndarray, fine: np.ndarray, dist: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    if p["skull_on"]:
        return lab > 0
    return (fine > 0) | (dist <= p["extraction_mm"])


def draw_sample(
    lm: LabelMap, rng: np.random.Generator, cfg: GeneratorConfig, whole: bool = False,
    raw: bool = False, erase: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One image/label pair.

    With ``whole`` and ``raw`` the image is what a scanner would deliver for this head on the
    working grid, *before* any preprocessing: not z-scored, not cropped, noise in the air when
    the skull is on, zero outside the brain when stripped, dropped series still present (the
    caller leaves their files out). For end-to-end tests of ``transmed predict``.

    Args:
        lm: the label map.
        whole: the whole map (no rotation, cropped to the head or brain box + 5 mm, as
            preprocessing crops) instead of a patch.
        erase: with ``whole``, the head with its tumour replaced by the nearest normal tissue
            (:func:`erase_tumour`: the same anatomy and mass effect, no tumour; labels all 0).
            It draws no random number, so the image's other draws are those of the same
            ``rng`` without it. For tumour-free test heads from many anatomies.
    Returns:
        ``image`` (4, *S) float32 z-scored (T1, T1ce, T2, FLAIR; 0 outside the mask and for
        dropped modalities), ``fine`` (*S) uint8 fine classes, ``info`` (the draws).
    """
    if erase and not whole:
        raise ValueError("draw_sample: erase=True needs whole=True (patches use "
                         "GeneratorConfig.tumour_free_prob)")
    shape = np.asarray(lm.fine.shape)
    p = _draw_params(rng, cfg)
    flip_lr = bool(rng.uniform() < 0.5)
    erased = hard_negative = False
    if whole:
        fine = erase_tumour(lm.fine) if erase else lm.fine
        erased = bool(erase)
        dist = lm.dist
        src = None
        out_shape = tuple(int(s) for s in shape)
    else:
        patch = np.asarray(cfg.patch_size)
        tumour = lm.tumour_voxels
        if tumour.size and rng.uniform() < cfg.foreground_prob:
            centre = np.asarray(np.unravel_index(tumour[rng.integers(tumour.size)], lm.fine.shape),
                                dtype=np.float64)  # fmt: skip
        else:
            brain, jitter = lm.brain_voxels_half, 6.0
            if cfg.hard_negative_prob > 0 and rng.uniform() < cfg.hard_negative_prob:
                bright, shell = lm.lookalike_voxels_half()
                pool = bright if bright.size and (rng.uniform() < 0.5 or not shell.size) else shell
                if pool.size:  # the look-alike itself at the centre (±1 voxel off the grid)
                    brain, jitter, hard_negative = pool, 1.0, True
            half = tuple((int(n) + 1) // 2 for n in shape)
            pick = np.unravel_index(brain[rng.integers(brain.size)], half)
            centre = np.asarray(pick, dtype=np.float64) * 2 + rng.normal(0.0, jitter, 3)
        angles = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, 3)
        scale = rng.uniform(*cfg.scale) * rng.uniform(0.95, 1.05, 3)
        grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in patch], indexing="ij"))
        m = rotation_matrix(tuple(angles)) * scale[None, :]
        src = (m @ grid.reshape(3, -1)) + centre[:, None]  # (3, N) label-map voxels
        fine = ndi.map_coordinates(lm.fine, src, order=0, mode="constant", cval=0)
        dist = ndi.map_coordinates(lm.dist, src, order=1, mode="constant", cval=40.0)
        out_shape = tuple(int(s) for s in patch)
        if cfg.tumour_free_prob > 0 and rng.uniform() < cfg.tumour_free_prob:
            fine = erase_tumour(fine.reshape(out_shape)).ravel()
            erased = True
    # the smooth fields, sampled on a 9-node sub-grid of the output and up-sampled (exact for
    # the affine map, accurate for fields that vary over ~40 mm)
    sub = [np.linspace(0, n - 1, 9) for n in out_shape]
    sub_idx = np.stack(np.meshgrid(*sub, indexing="ij")).reshape(3, -1)
    if src is not None:
        sub_idx = m @ (sub_idx - ((np.asarray(out_shape) - 1) / 2)[:, None]) + centre[:, None]
    coarse_idx = sub_idx.T * ((_COARSE - 1) / (shape - 1))
    small = sample_points(p["coarse"], coarse_idx.astype(np.float32), border=True)
    fields = F.interpolate(torch.from_numpy(small.reshape(1, 5, 9, 9, 9)), size=out_shape,
                           mode="trilinear", align_corners=True)[0].reshape(5, -1).numpy()
    fine_flat, dist_flat = fine.ravel(), dist.ravel()
    lab = _layers(fine_flat, dist_flat, 1.0 + p["layer_noise"] * fields[0], p["layers"])
    mask = _mask(lab, fine_flat, dist_flat, p).reshape(out_shape)
    img = _intensities(lab, fields, p, rng).reshape(4, *out_shape)
    vol = torch.from_numpy(img)
    for c, spec in enumerate(p["resolution"]):
        vol[c] = _resolution(vol[c], spec, lm.spacing)
    img = _rician(vol.numpy(), p["noise"], rng)
    if whole and raw:
        if not p["skull_on"]:
            img[:, ~mask] = 0.0
        info = {"key": list(lm.key), "skull_on": p["skull_on"], "dropped": list(p["dropped"]),
                "resolution": [list(r) for r in p["resolution"]],
                "contrast_kind": p["contrast_kind"]}  # fmt: skip
        img = np.ascontiguousarray(np.flip(img, axis=(1, 2)))  # RAS, as below
        return img.astype(np.float32), np.ascontiguousarray(np.flip(fine.reshape(out_shape),
                                                                    axis=(0, 1))), info  # fmt: skip
    if whole:  # exact statistics, as preprocessing measures them on a whole case
        mean = np.array([img[c][mask].mean() for c in range(4)], dtype=np.float32)
        std = np.array([max(float(img[c][mask].std()), 1e-6) for c in range(4)], np.float32)
    else:
        mean, std = _stats(lm, p)
        std = std / p["contrast"][:, None].ravel()
        mean = mean - p["shift"] * std
    img = (img - mean[:, None, None, None]) / std[:, None, None, None]
    img[:, ~mask] = 0.0
    for c in p["dropped"]:
        img[c] = 0.0
    fine = fine.reshape(out_shape)
    if whole:  # crop to the mask box + 5 mm, as preprocessing does
        nz = np.argwhere(mask)
        margin = int(round(5.0 / lm.spacing))
        lo = np.maximum(nz.min(0) - margin, 0)
        hi = np.minimum(nz.max(0) + margin + 1, shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        img, fine = img[(slice(None), *box)], fine[box]
    # label-map axes are L, P, S; the network sees RAS arrays (and mirrored brains)
    axes = (1, 2) if flip_lr else (2,)
    img = np.ascontiguousarray(np.flip(img, axis=axes))
    fine = np.ascontiguousarray(np.flip(fine, axis=tuple(a - 1 for a in axes)))
    info = {
        "key": list(lm.key), "skull_on": p["skull_on"], "contrast_kind": p["contrast_kind"],
        "resolution": [list(r) for r in p["resolution"]], "dropped": list(p["dropped"]),
        "extraction_mm": p["extraction_mm"], "flip_lr": flip_lr, "tumour_erased": erased,
        "hard_negative": hard_negative,
        "zscore_mean": [round(float(v), 5) for v in mean],
        "zscore_std": [round(float(v), 5) for v in std],
    }  # fmt: skip
    return img.astype(np.float32), fine, info
