"""One synthetic case: deformed MNI anatomy + tumours + four contrasts, from ``(seed, index)``.

Pipeline (all random draws come from ``SeedSequence([seed, index])``, so a case never depends
on which other cases are generated, or in which process):

1. per-subject affine + elastic sampling field on the ~4 mm coarse grid;
2. tumour centres drawn in deep white matter of the deformed anatomy, then their mass effect
   composed into the sampling field (the anatomy is pushed before any contrast exists);
3. only voxels near the brain are visited: template channels sampled there, the brain
   (mask >= 0.5) kept, everything else stays 0 (skull-stripped like BraTS);
4. tumour labels and soft fractions, then the contrasts (see ``contrast.py``).

Full-size work per case is ~1.5 M brain voxels of point-wise arithmetic and trilinear sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from transmed.data.synth.anatomy import (
    TEMPLATE_CHANNELS,
    load_template,
    output_grid,
    sample_points,
)
from transmed.data.synth.contrast import (
    MODALITY_ORDER,
    bright_fraction,
    coarse_fields,
    sample_contrast,
    synthesise,
)
from transmed.data.synth.deformation import (
    MassEffect,
    apply_mass_effect,
    sample_deformation,
    sampling_field,
)
from transmed.data.synth.tumour import (
    ED,
    ET,
    NCR,
    build_box,
    evaluate_tumour,
    sample_tumours,
    sample_tumours_varied,
)

#: Largest case index that fits the five-digit BraTS 2021 id.
MAX_INDEX = 99_999


@dataclass(frozen=True)
class SynthConfig:
    """Cohort-level knobs; the defaults give a BraTS-like mix."""

    tumour_free_prob: float = 0.07  # fraction of cases with no tumour at all
    multifocal_prob: float = 0.12  # fraction with 2-3 foci (the first focus is never small)
    # "cohort": the BraTS-like mix of `transmed data synth`; "varied": the generator's wider
    # mix (non-enhancing tumours, 3-30 mm cores, cortical foci, no to extensive oedema)
    tumour_style: str = "cohort"

    def __post_init__(self) -> None:
        if self.tumour_style not in ("cohort", "varied"):
            raise ValueError(
                f"SynthConfig.tumour_style must be 'cohort' or 'varied', got {self.tumour_style!r}"
            )
        for name in ("tumour_free_prob", "multifocal_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SynthConfig.{name} must be in [0, 1], got {value}")
        if self.tumour_free_prob + self.multifocal_prob > 1.0:
            raise ValueError("SynthConfig: tumour_free_prob + multifocal_prob must be <= 1")


@dataclass
class SynthCase:
    """A generated case, in memory."""

    case_id: str  # BraTS2021_XXXXX
    images: dict[str, np.ndarray]  # modality -> (D, H, W) int16, zero outside the brain
    seg: np.ndarray  # (D, H, W) uint8, labels {0, 1 NCR, 2 ED, 4 ET}
    affine: np.ndarray  # (4, 4) voxel -> RAS+ mm, BraTS axis directions (L, P, S)
    params: dict  # the sidecar generation.json
    # (D, H, W) uint8, in memory only (QA, tests): 1 CSF, 2 GM, 3 WM where that class has a
    # fraction >= 0.6 outside the tumour labels, else 0
    tissue: np.ndarray
    # (D, H, W) uint8 fine classes for the domain-randomised generator (FINE_CLASSES), every
    # brain voxel labelled (argmax tissue, tumour compartments, bright normal structures)
    fine: np.ndarray | None = None


#: Fine classes of :attr:`SynthCase.fine` (0 = outside the brain).
FINE_CLASSES: tuple[str, ...] = (
    "background", "csf", "gm", "wm", "necrosis", "nonenhancing", "enhancing", "oedema",
    "bright", "wmh",
)  # fmt: skip


def case_id(index: int) -> str:
    """BraTS 2021 folder / file stem for case ``index`` (five digits, from 00000)."""
    return f"BraTS2021_{index:05d}"


def _check_ids(seed: int, index: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise ValueError(f"index must be an integer, got {index!r}")
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index must be in [0, {MAX_INDEX}] (five-digit BraTS id), got {index}")


def _label_volumes(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(labels, minlength=5)
    ncr, ed, et = int(counts[NCR]), int(counts[ED]), int(counts[ET])
    return {"NCR": ncr, "ED": ed, "ET": et, "TC": ncr + et, "WT": ncr + ed + et}


def generate_case(
    seed: int,
    index: int,
    shape: tuple[int, int, int] = (240, 240, 155),
    config: SynthConfig | None = None,
) -> SynthCase:
    """Generate case ``index`` of the cohort with ``seed`` on a ``shape`` grid.

    Same ``(seed, index, shape, config)`` -> identical arrays.

    Raises:
        ValueError: negative seed, index outside [0, 99999], a shape side outside [16, 512].
    """
    _check_ids(seed, index)
    config = config or SynthConfig()
    grid = output_grid(shape)
    template = load_template(grid.spacing)
    inv = template.inv_affine
    factor = np.asarray(grid.factor, dtype=np.float64)
    rng_def, rng_tum, rng_con = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), int(index)]).spawn(3)
    )

    # 1-2. deformation, tumour placement on the deformed coarse anatomy, mass effect
    deformation = sample_deformation(rng_def)
    field = sampling_field(grid, deformation, rng_def)  # (*coarse, 3) template mm
    q = field.reshape(-1, 3)
    gm_c, wm_c, mask_c, depth_c, _ = sample_points(template.data, q @ inv[:3, :3].T + inv[:3, 3])
    cerebrum = (q[:, 2] > -20.0) | ((q[:, 1] > -40.0) & (q[:, 2] > -40.0))  # no cerebellum
    if config.tumour_style == "varied":
        allowed = (mask_c > 0.5) & (depth_c > 3.0) & cerebrum & ((wm_c > 0.3) | (gm_c > 0.4))
        tumours = sample_tumours_varied(
            rng_tum,
            grid.coarse_world().reshape(-1, 3)[allowed],
            depth_c[allowed],
            (gm_c[allowed] > 0.3) | (depth_c[allowed] < 12.0),
            tumour_free_prob=config.tumour_free_prob,
            multifocal_prob=config.multifocal_prob,
        )
    else:
        allowed = (wm_c > 0.4) & (mask_c > 0.5) & (depth_c > 6.0) & cerebrum
        tumours = sample_tumours(
            rng_tum,
            grid.coarse_world().reshape(-1, 3)[allowed],
            depth_c[allowed],
            tumour_free_prob=config.tumour_free_prob,
            multifocal_prob=config.multifocal_prob,
        )
    effects = [MassEffect(t.centre_mm, t.mass_effect, t.mass_reach_mm) for t in tumours]
    field = apply_mass_effect(field, grid, effects, damping=depth_c / 15.0)
    field_vox = np.moveaxis(field @ inv[:3, :3].T + inv[:3, 3], -1, 0).astype(np.float32)

    # 3. visit only voxels near the brain: coarse cells with a corner within one node of a node
    # that samples brain (a cell's voxels interpolate the field from its 8 corners)
    near = sample_points(template.data[2:3], field_vox.reshape(3, -1).T)[0] > 0.0
    near = ndi.binary_dilation(near.reshape(grid.coarse_shape), np.ones((3, 3, 3), bool))
    cells = np.zeros_like(near)
    for corner in np.ndindex(2, 2, 2):
        src = tuple(slice(c, None) for c in corner)
        dst = tuple(slice(0, n - c) for c, n in zip(corner, near.shape, strict=True))
        cells[dst] |= near[src]
    cell_of = [np.arange(n) // f for n, f in zip(grid.shape, grid.factor, strict=True)]
    flat = np.flatnonzero(cells[np.ix_(*cell_of)])
    ijk = np.stack(np.unravel_index(flat, grid.shape), axis=-1).astype(np.float32)
    tvox = sample_points(field_vox, ijk * (1.0 / factor).astype(np.float32), border=True).T
    brain = sample_points(template.data[2:3], tvox)[0] >= 0.5
    flat, ijk, tvox = flat[brain], ijk[brain], tvox[brain]
    anatomy = sample_points(template.data, tvox)  # (5, N)
    world = grid.voxel_to_world(ijk)

    def anatomy_at(points_mm: np.ndarray) -> np.ndarray:
        """(N, 3) subject mm -> (3, N) gm, wm, mask of the deformed anatomy."""
        coarse = grid.world_to_voxel(points_mm) / factor.astype(np.float32)
        return sample_points(template.data[:3], sample_points(field_vox, coarse, border=True).T)

    # 4. tumours and contrasts
    contrast = sample_contrast(rng_con, grid.spacing)
    fields = sample_points(
        coarse_fields(rng_con, grid, contrast), ijk * (1.0 / factor).astype(np.float32), border=True
    )
    total = np.maximum(np.maximum(anatomy[2], anatomy[0] + anatomy[1]), 1e-3)
    csf = np.clip(anatomy[2] - anatomy[0] - anatomy[1], 0.0, 1.0) / total
    n = len(flat)
    label = np.zeros(n, dtype=np.uint8)
    keys = ("ncr", "et", "ed", "ed_strength", "het", "nec")
    frac = {k: np.zeros(n, dtype=np.float32) for k in keys}
    box_step = max(3.0, min(grid.spacing))
    for t in tumours:
        box = build_box(t, rng_tum, anatomy_at, box_step)
        sel = np.flatnonzero(box.contains(world))
        res = evaluate_tumour(t, box, world[sel], csf[sel], contrast.pv_width_mm)
        old, new = label[sel], res["label"]
        old_core, new_core = np.isin(old, (NCR, ET)), np.isin(new, (NCR, ET))
        label[sel] = np.where(old_core, old, np.where(new_core, new, np.maximum(old, new)))
        touched = (res["ncr"] + res["et"] + res["ed"]) > 0
        frac["het"][sel[touched]] = res["het"][touched]
        for k in ("ncr", "et", "ed", "ed_strength", "nec"):
            frac[k][sel] = np.maximum(frac[k][sel], res[k])
    core = frac["ncr"] + frac["et"]
    over = core > 1.0
    frac["ncr"][over] /= core[over]
    frac["et"][over] /= core[over]
    frac["ed"] = np.minimum(frac["ed"], 1.0 - np.minimum(core, 1.0))
    values = synthesise(contrast, anatomy, fields, frac, rng_con)  # (4, N) int16

    size = int(np.prod(grid.shape))
    images = {}
    for m, name in enumerate(MODALITY_ORDER):
        vol = np.zeros(size, dtype=np.int16)
        vol[flat] = values[m]
        images[name] = vol.reshape(grid.shape)
    seg = np.zeros(size, dtype=np.uint8)
    seg[flat] = label
    seg = seg.reshape(grid.shape)
    fractions = np.stack([csf, anatomy[0] / total, anatomy[1] / total])  # (3, N)
    dominant = (np.argmax(fractions, axis=0) + 1).astype(np.uint8)
    dominant[(fractions.max(axis=0) < 0.6) | (label > 0)] = 0
    tissue = np.zeros(size, dtype=np.uint8)
    tissue[flat] = dominant
    fine = np.zeros(size, dtype=np.uint8)
    fine[flat] = _fine_labels(contrast, anatomy, fields, fractions, label, frac["nec"])

    params = {
        "generator": "transmed.data.synth",
        "case_id": case_id(index),
        "seed": int(seed),
        "index": int(index),
        "shape": list(grid.shape),
        "spacing_mm": [round(s, 6) for s in grid.spacing],
        "affine": grid.affine.round(6).tolist(),
        "image_dtype": "int16",
        "labels": {"NCR": NCR, "ED": ED, "ET": ET},
        "config": {
            "tumour_free_prob": config.tumour_free_prob,
            "multifocal_prob": config.multifocal_prob,
        },
        "template": "MNI ICBM152 2009a sym (nilearn), channels " + ", ".join(TEMPLATE_CHANNELS),
        "deformation": deformation.to_dict(),
        "tumour_count": len(tumours),
        "tumours": [t.to_dict() for t in tumours],
        "contrast": contrast.to_dict(),
        "brain_voxels": int(n),
        "label_volumes_voxels": _label_volumes(label),
    }
    return SynthCase(
        case_id(index), images, seg, grid.affine.copy(), params, tissue.reshape(grid.shape),
        fine.reshape(grid.shape),
    )  # fmt: skip


def _fine_labels(
    contrast, anatomy: np.ndarray, fields: np.ndarray, fractions: np.ndarray,
    label: np.ndarray, nec: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """:data:`FINE_CLASSES` at the brain voxels: argmax CSF/GM/WM, then bright normal
    structures (vessels, dura rim, choroid plexus) and white-matter/periventricular
    hyperintensities, then the tumour compartments on top (necrosis vs. solid non-enhancing
    tumour split by the necrotic fraction)."""
    out = (np.argmax(fractions, axis=0) + 1).astype(np.uint8)  # 1 csf, 2 gm, 3 wm
    csf = fractions[0]
    _, wm_raw, _, depth, pv = anatomy
    wmh = np.clip((fields[5] - contrast.wmh_threshold) / 0.4, 0.0, 1.0) * fractions[2]
    hyper = (1.0 - csf) * (contrast.periventricular / 0.7) * np.clip(pv, 0.0, 0.7) + 0.6 * wmh
    out[hyper > 0.25] = 9
    out[bright_fraction(contrast, csf, depth, pv, fields) > 0.5] = 8
    out[label == ED] = 7
    out[label == ET] = 6
    core = label == NCR
    out[core & (nec >= 0.5)] = 4
    out[core & (nec < 0.5)] = 5
    return out
