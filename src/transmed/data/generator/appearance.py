"""Random intensity tables: one mean and one spread per class, modality and image.

Means are relative to white matter (= 1) in each modality. Two kinds of draw, per image and
modality:

- **near real MR orderings** (most images): the base table below with a log-normal jitter
  (sigma ``jitter``) on every entry, then the few relations that define the task re-imposed
  (enhancing tumour brighter than grey and white matter on T1ce, not on T1; oedema brighter
  than grey matter on T2/FLAIR; necrosis darker than the enhancing rim on T1ce);
- **random** (``random_prob``): SynthSeg-style uniform means U(0.05, 1.6) for every normal and
  extra-cerebral class, while the tumour classes keep their realistic values relative to white
  matter, so the model learns tumour appearance without relying on the look of normal tissue.
  With ``keep_relations`` the random draw keeps the relations that define the compartments
  against the normal parenchyma that is not a mimic (:data:`RANDOM_CAPS`): on T1ce, CSF, grey
  matter and WM hyperintensities stay darker than the enhancing tumour; on T2, grey matter
  stays darker than oedema; on FLAIR, CSF and grey matter stay darker than oedema. Without it
  (the default, as every run before the option), 46 % of random T1ce draws bring CSF, grey
  matter or WMH within 1.3x of enhancing tumour (grey matter at or above it in 2 %), and 10 %
  of random FLAIR draws bring CSF or grey matter within 1.1x of oedema. Bright normal
  structures (vessels, dura, choroid plexus), WM hyperintensities on T2/FLAIR and the
  extra-cerebral classes stay fully random: they are the real mimics.

Spreads (within-class standard deviation, relative to the class mean) are U(0.02, 0.10) for
normal tissue and U(0.05, 0.20) for tumour compartments.
"""

from __future__ import annotations

import numpy as np

#: Classes of the generator's images: the synth fine classes, then extra-cerebral layers.
GEN_CLASSES: tuple[str, ...] = (
    "air", "csf", "gm", "wm", "necrosis", "nonenhancing", "enhancing", "oedema", "bright",
    "wmh", "extra_csf", "skull", "marrow", "scalp", "fat",
)  # fmt: skip
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
TUMOUR = (4, 5, 6, 7)

#: ``keep_relations``: (modality, capped classes, tumour class, margin). The capped classes'
#: random means stay below the tumour class's mean / margin; the margins are the lower ends of
#: the real-ordering relations below.
RANDOM_CAPS: tuple[tuple[int, tuple[int, ...], int, float], ...] = (
    (1, (1, 2, 9), 6, 1.3),  # T1ce: CSF, GM, WMH darker than enhancing tumour
    (2, (2,), 7, 1.15),  # T2: GM darker than oedema
    (3, (1, 2), 7, 1.1),  # FLAIR: CSF, GM darker than oedema
)
_RANDOM_LO, _RANDOM_HI = 0.05, 1.6

#: Mean intensity relative to WM; rows GEN_CLASSES, columns MODALITIES.
BASE_MEANS = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # air (noise only)
        [0.32, 0.34, 2.60, 0.30],  # csf
        [0.72, 0.74, 1.40, 1.30],  # gm
        [1.00, 1.00, 1.00, 1.00],  # wm
        [0.42, 0.48, 2.30, 0.95],  # necrosis: dark T1/T1ce, bright T2; FLAIR drawn wider
        [0.68, 0.70, 1.80, 1.55],  # non-enhancing solid tumour: no enhancement
        [0.78, 1.55, 1.55, 1.45],  # enhancing tumour: bright on T1ce only
        [0.72, 0.74, 1.95, 1.60],  # oedema: bright T2/FLAIR
        [0.80, 1.55, 0.70, 0.85],  # bright normal structures (vessels, dura, choroid plexus)
        [0.85, 0.85, 1.65, 1.50],  # white-matter / periventricular hyperintensities
        [0.30, 0.45, 2.50, 0.35],  # CSF and meninges outside the brain
        [0.08, 0.08, 0.08, 0.08],  # cortical bone
        [1.15, 1.15, 0.95, 1.00],  # fatty marrow (diploe)
        [0.65, 0.75, 0.80, 0.70],  # scalp soft tissue and muscle
        [1.45, 1.40, 1.15, 1.20],  # subcutaneous fat
    ],
    dtype=np.float64,
)


def draw_appearance(
    rng: np.random.Generator, jitter: float = 0.15, random_prob: float = 0.15,
    keep_relations: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Means and spreads for one image.

    ``keep_relations`` changes no random draw (the same numbers are consumed either way): a
    capped class's uniform draw is rescaled from U(0.05, 1.6) to U(0.05, min(1.6, cap)).

    Returns:
        ``means`` (15, 4) relative to WM, ``spread`` (15, 4) std relative to each mean, and the
        kind of draw per modality ("real" or "random").
    """
    means = BASE_MEANS * np.exp(np.clip(rng.normal(0.0, jitter, BASE_MEANS.shape), -2 * jitter,
                                        2 * jitter))  # fmt: skip
    means[0] = 0.0
    means[3] = 1.0
    t1, t1ce, t2, flair = range(4)
    means[4, flair] = rng.uniform(0.5, 1.4)  # cyst-like dark to proteinaceous
    # the relations that define the compartments
    normal_t1ce = max(means[2, t1ce], means[3, t1ce])
    means[6, t1ce] = max(means[6, t1ce], normal_t1ce * rng.uniform(1.3, 1.9))
    means[6, t1] = min(means[6, t1], means[3, t1] * 0.95)
    means[4, t1ce] = min(means[4, t1ce], means[6, t1ce] * 0.55)
    means[5, t1ce] = means[5, t1] * rng.uniform(0.95, 1.08)  # no enhancement
    means[7, flair] = max(means[7, flair], means[2, flair] * rng.uniform(1.1, 1.35))
    means[7, t2] = max(means[7, t2], means[2, t2] * rng.uniform(1.15, 1.5))
    means[8, t1ce] = means[6, t1ce] * rng.uniform(0.9, 1.25)
    kinds = []
    for m in range(4):
        if rng.uniform() < random_prob:
            normal = [c for c in range(1, len(GEN_CLASSES)) if c not in TUMOUR and c != 3]
            means[normal, m] = rng.uniform(_RANDOM_LO, _RANDOM_HI, len(normal))
            if keep_relations:
                _cap_random(means, m)
            kinds.append("random")
        else:
            kinds.append("real")
    spread = rng.uniform(0.02, 0.10, BASE_MEANS.shape)
    spread[list(TUMOUR)] = rng.uniform(0.05, 0.20, (len(TUMOUR), 4))
    spread[0] = 0.0
    return means.astype(np.float32), spread.astype(np.float32), kinds


def _cap_random(means: np.ndarray, modality: int) -> None:
    """In place: rescale the random draws of :data:`RANDOM_CAPS`' classes in ``modality`` so
    that each stays below its tumour class's mean divided by the margin."""
    for m, classes, tumour, margin in RANDOM_CAPS:
        if m != modality:
            continue
        top = min(_RANDOM_HI, max(float(means[tumour, m]) / margin, 2 * _RANDOM_LO))
        for c in classes:
            u = (means[c, m] - _RANDOM_LO) / (_RANDOM_HI - _RANDOM_LO)
            means[c, m] = _RANDOM_LO + u * (top - _RANDOM_LO)
