"""Tumour geometry: irregular core with necrosis and enhancing rim, oedema spreading along WM.

Each tumour lives in a box of nodes around its centre (spacing ~2.5-4 mm). On the box we draw
smooth noise fields and the oedema's geodesic distance; voxels inside the box then read them by
trilinear interpolation, so boundaries stay smooth at any output resolution.

- Tumour core (TC): an ellipsoid (random axes and orientation) whose radius is perturbed by
  smooth noise, ``rho = |L (p - c)| / (r (1 + a n_core(p)))``, TC where ``rho < 1``.
- Necrosis (NCR) inside it where ``rho < q (1 + a_n n_nec(p))``; the rest of the core is the
  enhancing rim (ET), except where the rim is patchy (``n_patch < -threshold``) or the tumour
  does not enhance: those parts are non-enhancing core, which BraTS 2021 also labels 1.
- Oedema (ED): geodesic distance from the core, travelling at speed ``1.0 WM + 0.25 GM +
  0.06 CSF`` (almost 0 outside the brain), below ``D (1 + a_e n_ed(p))``. It therefore reaches
  far along white matter and stops at the cortex and the ventricles. Scipy's Dijkstra on the
  26-connected node graph is used because the metric is anisotropic and spatially varying,
  which an Euclidean distance transform cannot express.

Noise fields are clipped to +-2 so that every label provably stays inside the box.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from transmed.data.synth.anatomy import apply_affine, sample_points
from transmed.data.synth.deformation import rotation_matrix, smooth_noise

#: BraTS 2021 label values.
NCR, ED, ET = 1, 2, 4
_NOISE_CLIP = 2.0
#: Geodesic speed per tissue (mm travelled per unit distance): fast in WM, slow in GM/CSF.
SPEED_WM, SPEED_GM, SPEED_CSF = 1.0, 0.25, 0.06


@dataclass(frozen=True)
class TumourParams:
    """One tumour focus (subject world mm)."""

    centre_mm: tuple[float, float, float]
    radius_mm: float  # core radius before the shape noise
    axes: tuple[float, float, float]  # ellipsoid semi-axis factors
    rotation_deg: tuple[float, float, float]
    shape_noise: float  # relative radius perturbation a
    shape_noise_mm: float  # smoothness (Gaussian sigma) of the shape noise
    necrosis_ratio: float  # q = 1 - rim thickness / radius; 0 = no necrosis
    enhancing: bool
    patchiness: float  # rim enhances where n_patch > -patchiness
    oedema_mm: float  # geodesic reach D of the oedema
    oedema_noise: float  # a_e
    mass_effect: float  # k, see deformation.MassEffect
    mass_reach_mm: float  # lambda

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def box_radius_mm(self) -> float:
        """Half-size of a box that contains every voxel this tumour can label."""
        core = self.radius_mm * max(self.axes) * (1 + _NOISE_CLIP * self.shape_noise)
        oedema = self.oedema_mm * (1 + _NOISE_CLIP * self.oedema_noise) / SPEED_WM
        return core + oedema


def sample_tumours(
    rng: np.random.Generator,
    candidates_mm: np.ndarray,
    depth_mm: np.ndarray,
    *,
    tumour_free_prob: float,
    multifocal_prob: float,
) -> list[TumourParams]:
    """Draw 0, 1 or 2-3 tumours, centred on candidate points (deep white matter).

    Args:
        candidates_mm: (N, 3) subject world points allowed as tumour centres.
        depth_mm: (N,) their distance to the brain surface, to keep big cores inside the brain.
    """
    u = rng.uniform()
    if u < tumour_free_prob or len(candidates_mm) == 0:
        return []
    count = int(rng.integers(2, 4)) if u < tumour_free_prob + multifocal_prob else 1
    tumours: list[TumourParams] = []
    for focus in range(count):
        small = rng.uniform() < 0.2 or focus > 0
        radius = (
            float(np.exp(rng.uniform(np.log(3.0), np.log(10.0))))
            if small
            else float(rng.uniform(10.0, 24.0))
        )
        ok = depth_mm > min(radius + 4.0, np.quantile(depth_mm, 0.9))
        if focus > 0 and rng.uniform() < 0.6:  # satellite near the first focus
            dist = np.linalg.norm(candidates_mm - np.asarray(tumours[0].centre_mm), axis=1)
            near = ok & (dist > 12.0) & (dist < 45.0)
            ok = near if near.any() else ok
        centre = candidates_mm[rng.choice(np.flatnonzero(ok))] + rng.uniform(-2.0, 2.0, 3)
        # big cores are necrotic (glioblastoma-like); small ones may be solid
        necrotic = radius >= 7.0 and (rng.uniform() < 0.7 or radius >= 12.0)
        tumours.append(
            TumourParams(
                centre_mm=tuple(float(v) for v in centre),  # type: ignore[arg-type]
                radius_mm=radius,
                axes=tuple(float(v) for v in rng.uniform(0.75, 1.25, 3)),  # type: ignore[arg-type]
                rotation_deg=tuple(float(v) for v in rng.uniform(-90, 90, 3)),  # type: ignore[arg-type]
                shape_noise=float(rng.uniform(0.1, 0.3)),
                shape_noise_mm=float(rng.uniform(0.25, 0.5) * max(radius, 6.0)),
                necrosis_ratio=float(np.clip(1 - rng.uniform(2.5, 7.0) / radius, 0.2, 0.85))
                if necrotic
                else 0.0,
                enhancing=bool(rng.uniform() < 0.92),
                patchiness=float(rng.uniform(0.8, 3.0)),
                oedema_mm=float(min(rng.uniform(0.3, 1.2) * radius + rng.uniform(2.0, 12.0), 30.0)),
                oedema_noise=float(rng.uniform(0.15, 0.35)),
                mass_effect=float(rng.uniform(0.15, 0.45) * min(1.0, radius / 15.0)),
                mass_reach_mm=float(radius * 1.5 + 5.0),
            )
        )
    return tumours


def sample_tumours_varied(
    rng: np.random.Generator,
    candidates_mm: np.ndarray,
    depth_mm: np.ndarray,
    cortical: np.ndarray,
    *,
    tumour_free_prob: float,
    multifocal_prob: float,
) -> list[TumourParams]:
    """A wider tumour mix than :func:`sample_tumours`, for the domain-randomised generator.

    - size: core radius log-uniform in 3-30 mm (≈ 0.1-113 ml of core, more with oedema);
    - type: ring-enhancing with necrosis (glioblastoma-like, ≥ 7 mm), solid enhancing, and
      non-enhancing lower-grade tumours with no enhancing tumour at all (25 %);
    - location: deep white matter or, for 30 % of foci, cortical/subcortical (``cortical``);
    - oedema: none (15 %: a 0.5 mm reach, inside the core) to extensive (reach up to 40 mm).

    Args:
        candidates_mm: (N, 3) subject world points allowed as centres.
        depth_mm: (N,) their distance to the brain surface.
        cortical: (N,) bool, points in or next to the cortex.
    """
    u = rng.uniform()
    if u < tumour_free_prob or len(candidates_mm) == 0:
        return []
    count = int(rng.integers(2, 4)) if u < tumour_free_prob + multifocal_prob else 1
    tumours: list[TumourParams] = []
    for focus in range(count):
        radius = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0 if focus == 0 else 12.0))))
        kind = rng.choice(["ring", "solid", "nonenhancing"], p=[0.55, 0.2, 0.25])
        if kind == "ring" and radius < 7.0:
            kind = "solid"
        want_cortical = rng.uniform() < 0.3 and cortical.any()
        ok = (depth_mm > min(0.6 * radius + 2.0, np.quantile(depth_mm, 0.9))) & (
            cortical if want_cortical else ~cortical
        )
        if not ok.any():
            ok = depth_mm > min(0.6 * radius + 2.0, np.quantile(depth_mm, 0.9))
        if focus > 0 and rng.uniform() < 0.6:  # satellite near the first focus
            dist = np.linalg.norm(candidates_mm - np.asarray(tumours[0].centre_mm), axis=1)
            near = ok & (dist > 12.0) & (dist < 45.0)
            ok = near if near.any() else ok
        centre = candidates_mm[rng.choice(np.flatnonzero(ok))] + rng.uniform(-2.0, 2.0, 3)
        if kind == "ring":
            necrosis = float(np.clip(1 - rng.uniform(2.0, 8.0) / radius, 0.2, 0.85))
        elif kind == "nonenhancing" and radius >= 10.0 and rng.uniform() < 0.2:
            necrosis = float(rng.uniform(0.2, 0.5))  # cystic part of a lower-grade tumour
        else:
            necrosis = 0.0
        oedema = 0.5 if rng.uniform() < 0.15 else float(
            min(rng.uniform(0.0, 1.5) * radius + rng.uniform(0.0, 15.0), 40.0)
        )
        if kind == "nonenhancing":
            oedema = min(oedema, float(rng.uniform(0.0, 0.5) * radius + 2.0))
        tumours.append(
            TumourParams(
                centre_mm=tuple(float(v) for v in centre),  # type: ignore[arg-type]
                radius_mm=radius,
                axes=tuple(float(v) for v in rng.uniform(0.7, 1.3, 3)),  # type: ignore[arg-type]
                rotation_deg=tuple(float(v) for v in rng.uniform(-90, 90, 3)),  # type: ignore[arg-type]
                shape_noise=float(rng.uniform(0.1, 0.35)),
                shape_noise_mm=float(rng.uniform(0.25, 0.5) * max(radius, 6.0)),
                necrosis_ratio=necrosis,
                enhancing=kind != "nonenhancing",
                patchiness=float(rng.uniform(0.3, 3.0)),
                oedema_mm=oedema,
                oedema_noise=float(rng.uniform(0.15, 0.35)),
                mass_effect=float(rng.uniform(0.1, 0.45) * min(1.0, radius / 15.0)),
                mass_reach_mm=float(radius * 1.5 + 5.0),
            )
        )
    return tumours


@dataclass
class TumourBox:
    """Node fields of one tumour: ``fields[c]`` on nodes ``origin + h * index`` (world mm)."""

    origin_mm: np.ndarray  # (3,)
    step_mm: float
    fields: np.ndarray  # (6, n0, n1, n2): geodesic mm, noise core, nec, ed, patch, het

    def contains(self, points_mm: np.ndarray) -> np.ndarray:
        hi = self.origin_mm + self.step_mm * (np.asarray(self.fields.shape[1:]) - 1)
        return np.all((points_mm >= self.origin_mm) & (points_mm <= hi), axis=1)


def geodesic_distance(
    speed: np.ndarray, sources: np.ndarray, step_mm: float, limit_mm: float
) -> np.ndarray:
    """Travel distance (mm) from ``sources`` over the 26-connected node graph.

    Edge cost = length x mean(1 / speed) of its two nodes. Nodes beyond ``limit_mm`` get
    ``2 * limit_mm`` (finite, so that trilinear interpolation stays finite).
    """
    shape = speed.shape
    index = np.arange(speed.size).reshape(shape)
    slowness = 1.0 / np.maximum(speed, 1e-3)
    rows, cols, costs = [], [], []
    for off in np.ndindex(3, 3, 3):
        d = np.asarray(off) - 1
        if tuple(d) <= (0, 0, 0):  # keep one of each symmetric pair (13 offsets)
            continue
        a = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(d, shape, strict=True))
        b = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(d, shape, strict=True))
        rows.append(index[a].ravel())
        cols.append(index[b].ravel())
        length = step_mm * float(np.linalg.norm(d))
        costs.append((0.5 * length * (slowness[a] + slowness[b])).ravel())
    graph = csr_matrix(
        (np.concatenate(costs), (np.concatenate(rows), np.concatenate(cols))),
        shape=(speed.size, speed.size),
    )
    dist = dijkstra(
        graph, directed=False, indices=np.flatnonzero(sources), min_only=True, limit=limit_mm
    )
    dist[~np.isfinite(dist)] = 2.0 * limit_mm
    return dist.reshape(shape).astype(np.float32)


def _core_rho(
    t: TumourParams, points_mm: np.ndarray, n_core: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius rho and effective radius (mm) at (N, 3) points."""
    to_local = np.eye(4)
    to_local[:3, :3] = rotation_matrix(t.rotation_deg).T / np.asarray(t.axes)[:, None]
    to_local[:3, 3] = -to_local[:3, :3] @ np.asarray(t.centre_mm)
    local = apply_affine(to_local, points_mm)
    r_eff = t.radius_mm * (1.0 + t.shape_noise * n_core)
    return np.sqrt(np.einsum("ij,ij->i", local, local)) / r_eff, r_eff


def build_box(
    t: TumourParams,
    rng: np.random.Generator,
    anatomy_at: Callable[[np.ndarray], np.ndarray],
    step_mm: float,
) -> TumourBox:
    """Draw the noise fields of ``t`` and its oedema geodesic distance on a node box.

    Args:
        anatomy_at: maps (N, 3) subject world mm to (3, N) (gm, wm, mask) after deformation.
    """
    half = t.box_radius_mm + step_mm
    n = int(np.ceil(2 * half / step_mm)) + 1
    origin = np.asarray(t.centre_mm) - half
    axes = [origin[a] + step_mm * np.arange(n) for a in range(3)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    shape = (n, n, n)
    sig = [t.shape_noise_mm, t.shape_noise_mm, 6.0, 4.0, 2.5]  # core, nec, ed, patch, het (mm)
    noise = np.stack(
        [np.clip(smooth_noise(rng, shape, s / step_mm), -_NOISE_CLIP, _NOISE_CLIP) for s in sig]
    )
    gm, wm, mask = anatomy_at(nodes)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    speed = np.where(mask > 0.5, SPEED_WM * wm + SPEED_GM * gm + SPEED_CSF * csf, 1e-3)
    rho, _ = _core_rho(t, nodes, noise[0].ravel())
    sources = rho < 1.0
    if not sources.any():  # a core smaller than the node spacing
        sources[np.argmin(rho)] = True
    limit = t.oedema_mm * (1 + _NOISE_CLIP * t.oedema_noise)
    dist = geodesic_distance(speed.reshape(shape), sources.reshape(shape), step_mm, limit)
    return TumourBox(origin_mm=origin, step_mm=step_mm, fields=np.concatenate([dist[None], noise]))


def _ramp(signed_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Fraction inside a boundary at signed distance ``signed_mm`` (negative = inside)."""
    return np.clip(0.5 - signed_mm / width_mm, 0.0, 1.0)


def evaluate_tumour(
    t: TumourParams, box: TumourBox, points_mm: np.ndarray, csf: np.ndarray, pv_width_mm: float
) -> dict[str, np.ndarray]:
    """Labels and soft class fractions of one tumour at (N, 3) points inside its box.

    Returns:
        ``label`` (N,) uint8 in {0, 1, 2, 4}; fractions ``ncr``, ``et``, ``ed`` (N,) in [0, 1]
        with a linear partial-volume ramp of width ``pv_width_mm`` across each boundary;
        ``ed_strength`` (oedema fades from 1 at the core to ~0 at its edge); ``het`` (texture);
        ``nec`` the necrotic fraction (within the core: necrosis as opposed to solid tumour).
    """
    origin = box.origin_mm.astype(np.float32)
    f = sample_points(box.fields, (points_mm - origin) / np.float32(box.step_mm), border=True)
    geo, n_core, n_nec, n_ed, n_patch, n_het = f
    rho, r_eff = _core_rho(t, points_mm, n_core)
    s_tc = (rho - 1.0) * r_eff
    if t.necrosis_ratio > 0:
        q = t.necrosis_ratio * (1.0 + 0.3 * n_nec)
        s_nec = np.maximum((rho - q) * r_eff, s_tc)
    else:
        s_nec = np.full_like(s_tc, np.inf)
    enh = np.clip((n_patch + t.patchiness) / 0.5, 0.0, 1.0) if t.enhancing else 0.0 * n_patch
    reach = t.oedema_mm * (1.0 + t.oedema_noise * n_ed)
    s_ed = geo - reach + 10.0 * np.maximum(csf - 0.6, 0.0)  # oedema does not fill CSF

    f_tc, f_nec = _ramp(s_tc, pv_width_mm), _ramp(s_nec, pv_width_mm)
    f_et = (f_tc - f_nec) * enh
    label = np.zeros(len(points_mm), dtype=np.uint8)
    label[s_ed < 0] = ED
    in_tc = s_tc < 0
    label[in_tc] = np.where((s_nec[in_tc] >= 0) & (enh[in_tc] >= 0.5), ET, NCR)
    return {
        "label": label,
        "ncr": (f_tc - f_et).astype(np.float32),
        "et": f_et.astype(np.float32),
        "ed": ((1.0 - f_tc) * _ramp(s_ed, pv_width_mm)).astype(np.float32),
        "ed_strength": np.clip(1.0 - geo / np.maximum(reach, 1e-3), 0.0, 1.0).astype(np.float32),
        "het": n_het.astype(np.float32),
        "nec": f_nec.astype(np.float32),
    }
