"""Simulated hospitals that differ: scanner contrast, resolution, tumour mix and case count.

Each site is a BraTS 2021-layout cohort from the synthetic generator
(:mod:`transmed.data.synth`) with site-level settings:

- **resolution**: the generation grid (``shape``: the same field of view, so a smaller grid
  means larger voxels) and optional thick slices (``slice_factor``: each block of that many
  axial slices is replaced by its mean, as a 2D protocol with thick slices would record);
- **scanner contrast**: a per-modality gamma on the brain intensities (``gamma``) and extra
  Rician-like noise (``noise``, relative to the brain's 99th percentile) — z-scoring in
  preprocessing removes gains and offsets, not these;
- **tumour mix**: ``SynthConfig`` (share of tumour-free and multifocal cases);
- **case count**: ``n_cases``.

Case indices are offset per site so case ids never collide when sites are pooled (the
centralised baseline of the benchmark).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from transmed.data.synth import SynthConfig, case_id, generate_case, is_complete, write_case

MODALITIES = ("t1", "t1ce", "t2", "flair")


@dataclass(frozen=True)
class SiteProfile:
    """One simulated hospital (see the module docstring)."""

    name: str
    n_cases: int
    shape: tuple[int, int, int] = (40, 40, 32)
    slice_factor: int = 1  # axial slices averaged together (thick slices)
    gamma: dict[str, float] = field(default_factory=dict)  # modality -> gamma (1 = unchanged)
    noise: float = 0.0  # extra noise sd, relative to the brain's 99th percentile
    tumour_free_prob: float = 0.07
    multifocal_prob: float = 0.12
    index_offset: int = 0  # first case index (keeps ids unique across sites)

    def __post_init__(self) -> None:
        if self.n_cases < 1:
            raise ValueError(f"site {self.name}: n_cases must be ≥ 1, got {self.n_cases}")
        if self.slice_factor < 1:
            raise ValueError(f"site {self.name}: slice_factor must be ≥ 1")
        unknown = sorted(set(self.gamma) - set(MODALITIES))
        if unknown or any(g <= 0 for g in self.gamma.values()):
            raise ValueError(f"site {self.name}: gamma needs modalities {MODALITIES}, values > 0")
        if self.noise < 0:
            raise ValueError(f"site {self.name}: noise must be ≥ 0")


def default_sites(scale: int = 1, shape: tuple[int, int, int] = (40, 40, 32)) -> list[SiteProfile]:
    """Three unequal hospitals (12, 7 and 5 cases × ``scale``).

    A: the reference protocol. B: a finer grid, darker T1ce (gamma 1.4), more multifocal
    tumours. C: thick slices, brighter FLAIR (gamma 0.7), noisy, no tumour-free case.
    """
    d, h, w = shape
    fine = (int(d * 1.2) // 4 * 4, int(h * 1.2) // 4 * 4, int(w * 1.2) // 4 * 4)
    return [
        SiteProfile("A", 12 * scale, shape, index_offset=0),
        SiteProfile("B", 7 * scale, fine, gamma={"t1ce": 1.4, "t2": 0.85}, noise=0.02,
                    multifocal_prob=0.4, index_offset=1000),  # fmt: skip
        SiteProfile("C", 5 * scale, shape, slice_factor=2, gamma={"flair": 0.7, "t1": 1.2},
                    noise=0.06, tumour_free_prob=0.0, multifocal_prob=0.25,
                    index_offset=2000),  # fmt: skip
    ]


def held_out_sites(sites: list[SiteProfile], per_site: int = 2) -> list[SiteProfile]:
    """A held-out test set drawn from every site's protocol (``per_site`` new cases each)."""
    from dataclasses import replace

    return [replace(p, name=f"test_{p.name}", n_cases=per_site, index_offset=p.index_offset + 500)
            for p in sites]  # fmt: skip


def apply_site_protocol(images: dict[str, np.ndarray], profile: SiteProfile,
                        rng: np.random.Generator) -> dict[str, np.ndarray]:  # fmt: skip
    """The site's scanner look on one case's int16 contrasts (zero outside the brain stays 0)."""
    out = {}
    for name, img in images.items():
        x = img.astype(np.float32)
        brain = x > 0
        if brain.any():
            top = float(np.percentile(x[brain], 99)) or 1.0
            g = profile.gamma.get(name, 1.0)
            if g != 1.0:
                x[brain] = top * np.clip(x[brain] / top, 0, None) ** g
            if profile.noise > 0:
                sd = profile.noise * top
                n1, n2 = rng.normal(0, sd, x.shape), rng.normal(0, sd, x.shape)
                x = np.where(brain, np.sqrt((x + n1) ** 2 + n2**2), 0.0)
            if profile.slice_factor > 1:
                x = _thick_slices(x, profile.slice_factor)
                x[~brain] = 0.0
        out[name] = np.clip(np.round(x), 0, np.iinfo(np.int16).max).astype(np.int16)
    return out


def _thick_slices(x: np.ndarray, k: int) -> np.ndarray:
    """Replace each block of ``k`` slices along the last (axial) axis by its mean."""
    n = x.shape[-1]
    out = x.copy()
    for s in range(0, n, k):
        out[..., s : s + k] = x[..., s : s + k].mean(axis=-1, keepdims=True)
    return out


def generate_site(profile: SiteProfile, out_dir: Path, seed: int = 0) -> list[Path]:
    """Write the site's cohort under ``out_dir`` (complete cases are kept: resumable)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = SynthConfig(tumour_free_prob=profile.tumour_free_prob,
                         multifocal_prob=profile.multifocal_prob)  # fmt: skip
    folders = []
    for i in range(profile.n_cases):
        index = profile.index_offset + i
        folder = out_dir / case_id(index)
        if not is_complete(folder):
            case = generate_case(seed, index, profile.shape, config)
            rng = np.random.default_rng(np.random.SeedSequence([seed, index, 7]))
            case.images = apply_site_protocol(case.images, profile, rng)
            case.params = {**case.params, "site": asdict(profile)}
            write_case(case, out_dir)
        folders.append(folder)
    return folders
