"""The four MRI contrasts from tissue fractions: class means, texture, bright normal structures,
bias field, Rician noise, and int16 scaling.

Image model at each brain voxel, per modality ``m`` (intensities relative to white matter = 1):

1. normal tissue ``T = sum_k f_k mu_k (1 + texture_k)`` over CSF, GM, WM (template fractions),
   plus normal FLAIR/T2 hyperintensities (periventricular caps, white-matter hyperintensities);
2. bright normal structures on T1ce (vessels in sulci, a dura-like rim at the brain surface,
   choroid plexus in the ventricles) replace a fraction ``f_b`` of it;
3. oedema moves it towards the oedema mean with a strength that fades towards the oedema's
   edge; necrosis and enhancing tumour replace it by their fractions (soft at the boundaries:
   the partial-volume model);
4. a smooth multiplicative bias field, Rician noise, then ``round(value * scale_m)`` as int16
   (scale_m = int16 value of white matter, 400-1200 per modality and subject, like raw scans).

Relative means follow the usual appearance: CSF dark on T1/FLAIR and bright on T2, WM brighter
than GM on T1 and darker on T2, ET bright on T1ce only, oedema bright on T2/FLAIR, necrosis dark
on T1/T1ce and bright on T2. The per-subject jitter (log-normal, sigma 0.07, clipped at 2 sigma)
is small enough that these orderings always hold. Three means are redrawn relative to others so
that classes overlap the way they do in real scans (and one threshold cannot separate them):
oedema on FLAIR = 1.12-1.32 x cortex, bright normal structures on T1ce = 0.95-1.25 x the
enhancing rim, necrosis on FLAIR anywhere in 0.6-1.3 x WM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transmed.data.synth.anatomy import OutputGrid
from transmed.data.synth.deformation import smooth_noise

MODALITY_ORDER: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
CLASSES: tuple[str, ...] = ("csf", "gm", "wm", "ncr", "ed", "et", "bright")
#: Mean intensity relative to WM, rows CLASSES, columns MODALITY_ORDER.
BASE_MEANS = np.array(
    [
        [0.32, 0.34, 2.60, 0.30],  # csf
        [0.72, 0.74, 1.40, 1.30],  # gm
        [1.00, 1.00, 1.00, 1.00],  # wm
        [0.42, 0.48, 2.30, 0.95],  # ncr: dark T1/T1ce, bright T2; FLAIR redrawn per subject
        [0.72, 0.74, 1.95, 1.60],  # ed: bright T2/FLAIR
        [0.78, 1.50, 1.55, 1.45],  # et: bright T1ce
        [0.80, 1.55, 0.70, 0.85],  # bright normal structures (vessels, dura, choroid plexus)
    ],
    dtype=np.float64,
)
#: Channels of the coarse random fields, see :func:`coarse_fields`.
COARSE_CHANNELS: tuple[str, ...] = ("bias_a", "bias_b", "texture", "vessel_a", "vessel_b", "patch")


@dataclass(frozen=True)
class ContrastParams:
    """One subject's appearance parameters (all recorded in the sidecar JSON)."""

    means: np.ndarray  # (7, 4) relative to WM, rows CLASSES
    texture: float  # amplitude of smooth within-class texture of normal tissue
    tumour_texture: float  # amplitude of the tumour's heterogeneity (NCR, ED)
    et_spread: float  # amplitude of the enhancing rim's intensity variation
    noise_level: float  # Rician sigma / WM intensity
    bias_strength: tuple[float, ...]  # std of log bias per modality
    bias_mix: tuple[float, ...]  # angle mixing the two shared bias fields, per modality
    bias_smoothness_mm: float
    pv_width_mm: float  # width of the partial-volume ramp at tumour boundaries
    periventricular: float  # FLAIR gain of periventricular caps
    wmh_threshold: float  # white-matter hyperintensity where the wmh field exceeds this
    vessel_width: float  # |noise| half-width defining vessel tubes
    dura_mm: float  # thickness of the dura-like rim
    scale: tuple[float, ...]  # int16 value of WM per modality

    def to_dict(self) -> dict:
        return {
            "class_means_relative_to_wm": {
                c: {m: round(float(v), 4) for m, v in zip(MODALITY_ORDER, row, strict=True)}
                for c, row in zip(CLASSES, self.means, strict=True)
            },
            "texture": self.texture,
            "tumour_texture": self.tumour_texture,
            "et_spread": self.et_spread,
            "noise_level": self.noise_level,
            "bias_strength": dict(zip(MODALITY_ORDER, self.bias_strength, strict=True)),
            "bias_mix_rad": dict(zip(MODALITY_ORDER, self.bias_mix, strict=True)),
            "bias_smoothness_mm": self.bias_smoothness_mm,
            "partial_volume_mm": self.pv_width_mm,
            "periventricular_gain": self.periventricular,
            "wmh_threshold": self.wmh_threshold,
            "vessel_width": self.vessel_width,
            "dura_mm": self.dura_mm,
            "int16_value_of_wm": dict(zip(MODALITY_ORDER, self.scale, strict=True)),
        }


def sample_contrast(
    rng: np.random.Generator, spacing_mm: tuple[float, float, float]
) -> ContrastParams:
    """Draw one subject's appearance parameters."""
    jitter = np.exp(np.clip(rng.normal(0.0, 0.07, BASE_MEANS.shape), -0.14, 0.14))
    means = BASE_MEANS * jitter
    means[2] = 1.0  # WM is the reference
    means[3, 3] = rng.uniform(0.6, 1.3)  # necrosis on FLAIR: cyst-like dark to proteinaceous
    # oedema on FLAIR relative to this subject's cortex: bright, but not a separate band
    means[4, 3] = means[1, 3] * rng.uniform(1.12, 1.32)
    # vessels / dura / choroid plexus enhance about as much as the tumour rim
    means[6, 1] = means[5, 1] * rng.uniform(0.95, 1.25)
    return ContrastParams(
        means=means,
        texture=float(rng.uniform(0.02, 0.05)),
        tumour_texture=float(rng.uniform(0.08, 0.2)),
        et_spread=float(rng.uniform(0.2, 0.35)),
        noise_level=float(rng.uniform(0.015, 0.05)),
        bias_strength=tuple(float(v) for v in rng.uniform(0.05, 0.18, 4)),
        bias_mix=tuple(float(v) for v in rng.uniform(0.0, np.pi, 4)),
        bias_smoothness_mm=float(rng.uniform(40.0, 80.0)),
        pv_width_mm=float(rng.uniform(0.8, 1.4) * max(spacing_mm)),
        periventricular=float(rng.uniform(0.2, 0.6)),
        wmh_threshold=float(rng.uniform(1.3, 2.6)),
        vessel_width=float(rng.uniform(0.08, 0.16)),
        dura_mm=float(rng.uniform(1.0, 2.5)),
        scale=tuple(float(v) for v in rng.uniform(400.0, 1200.0, 4)),
    )


def coarse_fields(rng: np.random.Generator, grid: OutputGrid, params: ContrastParams) -> np.ndarray:
    """Random smooth unit-std fields on the coarse grid, channels :data:`COARSE_CHANNELS`.

    The four modalities' bias fields are mixtures of two shared fields (same head coil and
    session), which also keeps the number of fields to interpolate per voxel small.

    Returns:
        (6, *coarse_shape) float32.
    """
    step = grid.coarse_spacing
    sigmas = (params.bias_smoothness_mm, params.bias_smoothness_mm, 4.0, 8.0, 8.0, 6.0)
    return np.stack([smooth_noise(rng, grid.coarse_shape, s / step) for s in sigmas])


def _ramp(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def bright_fraction(
    params: ContrastParams, csf: np.ndarray, depth: np.ndarray, pv: np.ndarray, fields: np.ndarray
) -> np.ndarray:
    """Fraction (N,) of normal T1ce-bright structures: sulcal vessels, dura rim, choroid plexus.

    Vessels are tubes where two smooth noise fields both cross zero (``|a|, |b| < width``),
    kept near the surface or in CSF; the rim and choroid plexus are patchy (``patch`` field).
    """
    a, b, patch = fields[3], fields[4], fields[5]
    w = params.vessel_width
    tube = _ramp((w - np.maximum(np.abs(a), np.abs(b))) / (0.5 * w))
    vessel = tube * ((csf > 0.25) | (depth < 8.0))
    rim = _ramp((params.dura_mm - depth) / params.dura_mm + 0.5) * (patch > -0.3)
    choroid = _ramp((patch - 0.6) / 0.3) * (pv > 0.6) * (csf > 0.5)
    return np.maximum(np.maximum(vessel, rim), choroid).astype(np.float32)


def synthesise(
    params: ContrastParams,
    anatomy: np.ndarray,
    fields: np.ndarray,
    tumour: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Intensities at N brain voxels.

    Args:
        anatomy: (5, N) template channels (gm, wm, mask, depth mm, periventricular).
        fields: (6, N) coarse fields interpolated at the voxels (:data:`COARSE_CHANNELS`).
        tumour: (N,) arrays ``ncr``, ``et``, ``ed``, ``ed_strength``, ``het``.
    Returns:
        (4, N) int16 in modality order :data:`MODALITY_ORDER`.
    """
    mu = params.means.astype(np.float32)[:, :, None]  # (7, 4, 1)
    gm, wm, mask, depth, pv = anatomy
    total = np.maximum(np.maximum(mask, gm + wm), 1e-3)
    csf = np.clip(mask - gm - wm, 0.0, 1.0) / total
    gm, wm = gm / total, wm / total
    texture = 1.0 + params.texture * fields[2]
    image = csf * mu[0] + (gm * texture) * mu[1] + (wm * texture) * mu[2]  # (4, N)
    # normal FLAIR/T2 hyperintensities: periventricular caps and white-matter hyperintensities
    # (drawn from the patch field: its high values in WM, disjoint from its CSF/surface uses)
    wmh = _ramp((fields[5] - params.wmh_threshold) / 0.4) * wm
    hyper = (1.0 - csf) * (params.periventricular / 0.7) * np.clip(pv, 0.0, 0.7) + 0.6 * wmh
    image[3] *= 1.0 + hyper
    image[2] *= 1.0 + 0.5 * hyper
    f_b = bright_fraction(params, csf, depth, pv, fields)
    image += f_b * (mu[6] - image)

    het = tumour["het"]
    # oedema fades towards its edge, so its outer boundary is as ambiguous as in real scans
    w_ed = tumour["ed"] * (0.2 + 0.8 * tumour["ed_strength"] ** 0.7)
    image += w_ed * (mu[4] * (1.0 + params.tumour_texture * het) - image)
    f_ncr, f_et = tumour["ncr"], tumour["et"]
    image *= 1.0 - f_ncr - f_et
    image += f_ncr * mu[3] * (1.0 + params.tumour_texture * het)
    image += f_et * mu[5] * (1.0 + params.et_spread * het)
    angle = np.asarray(params.bias_mix, dtype=np.float32)[:, None]
    gain = np.asarray(params.bias_strength, dtype=np.float32)[:, None]
    image *= np.exp(gain * (np.cos(angle) * fields[0] + np.sin(angle) * fields[1]))

    sigma = np.float32(params.noise_level)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag)  # Rician
    magnitude *= np.asarray(params.scale, dtype=np.float32)[:, None]
    return np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)
