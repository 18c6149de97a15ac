"""A picture grid of generated samples (docs/images/generator_samples.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transmed.data.generator.dataset import sample_rng
from transmed.data.generator.labelmaps import LabelMapPool
from transmed.data.generator.sample import GeneratorConfig, draw_sample

_COLOURS = {4: (1.0, 0.2, 0.2), 5: (1.0, 0.6, 0.1), 6: (1.0, 1.0, 0.2), 7: (0.2, 0.6, 1.0)}


def sample_grid(pool: LabelMapPool, out: Path, n: int = 6, seed: int = 0, whole: bool = True,
                config: GeneratorConfig | None = None) -> Path:  # fmt: skip
    """Rows: samples; columns: T1, T1ce, T2, FLAIR (axial slice through the tumour) and the
    labels (red necrosis, orange non-enhancing, yellow enhancing, blue oedema)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = config or GeneratorConfig()
    fig, axes = plt.subplots(n, 5, figsize=(10, 2.1 * n))
    for row in range(n):
        rng = sample_rng(seed, 10_000, row)
        lm = pool.get(int(rng.integers(len(pool))))
        image, fine, info = draw_sample(lm, rng, config, whole=whole)
        tumour = (fine >= 4) & (fine <= 7)
        z = int(np.argmax(tumour.sum(axis=(0, 1)))) if tumour.any() else fine.shape[2] // 2
        for c, name in enumerate(("T1", "T1ce", "T2", "FLAIR")):
            ax = axes[row, c]
            sl = image[c, :, :, z].T
            ax.imshow(sl, cmap="gray", origin="lower", vmin=-2.5, vmax=3.5)
            res = info["resolution"][c]
            tag = "dropped" if c in info["dropped"] else (
                f"{res[0]} {res[2]:.1f}" if res[0] != "native" else "native")
            ax.set_title(f"{name} ({tag}, {info['contrast_kind'][c]})", fontsize=6)
        rgb = np.zeros((*fine.shape[:2], 3))
        for k, col in _COLOURS.items():
            rgb[fine[:, :, z] == k] = col
        axes[row, 4].imshow(np.transpose(rgb, (1, 0, 2)), origin="lower")
        axes[row, 4].set_title("skull on" if info["skull_on"] else "skull-stripped", fontsize=6)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
