"""T1ce and FLAIR of random-contrast draws with and without random_keeps_relations.

    python relations_fig.py OUT.png RUN/labelmaps   # a run's label-map pool (seed 0, 1.5 mm)
"""

import copy
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from transmed.data.generator import GeneratorConfig, LabelMapPool, draw_sample  # noqa: E402
from transmed.data.generator.appearance import draw_appearance  # noqa: E402
from transmed.data.generator.dataset import sample_rng  # noqa: E402

pool = LabelMapPool(Path(sys.argv[2]), 96, 0, 1.5)
idx = next(i for i in range(96) if pool.get(i).tumour_voxels.size > 20000)
lm = pool.get(idx)
picks = []  # draws whose uncapped T1ce and FLAIR breach the relations for grey matter
for d in range(400):
    means, _, _ = draw_appearance(copy.deepcopy(sample_rng(7, d, idx)), 0.15, 1.0, False)
    if means[2, 1] > means[6, 1] / 1.3 and means[2, 3] > means[7, 3] / 1.1:
        picks.append(d)
    if len(picks) == 3:
        break
cfgs = {keep: GeneratorConfig(random_contrast_prob=1.0, random_keeps_relations=keep,
                              dropout_prob=0.0, skull_prob=0.0, thick_slice_prob=0.0,
                              lowres_prob=0.0)
        for keep in (False, True)}
fig, ax = plt.subplots(len(picks), 4, figsize=(12, 3.2 * len(picks)))
for row, d in enumerate(picks):
    for k, keep in enumerate((False, True)):
        img, fine, _ = draw_sample(lm, sample_rng(7, d, idx), cfgs[keep], whole=True)
        tumour = (fine >= 4) & (fine <= 7)
        zz = int(np.median(np.nonzero(tumour.any((0, 1)))[0]))
        for j, (m, name) in enumerate(((1, "T1ce"), (3, "FLAIR"))):
            a = ax[row, 2 * j + k]
            a.imshow(np.rot90(img[m, :, :, zz]), cmap="gray", vmin=-3, vmax=4)
            a.contour(np.rot90(tumour[:, :, zz]), [0.5], colors="y", linewidths=0.6)
            a.set_title(f"{name}, {'kept' if keep else 'default'} (draw {d})", fontsize=8)
            a.axis("off")
fig.suptitle("Random contrast draws: default vs random_keeps_relations (tumour outlined)")
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=70)
print("saved", picks, idx)
