"""A tiny labelled BraTS-2021-layout dataset for training tests (spheres in noise)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (32, 32, 24)


def write_tiny_brats(root: Path, n_cases: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    brain = ((zz - 16) / 14) ** 2 + ((yy - 16) / 14) ** 2 + ((xx - 12) / 11) ** 2 < 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for i in range(n_cases):
        cid = f"BraTS2021_{i:05d}"
        case = root / cid
        case.mkdir(parents=True)
        c = rng.integers(10, 22, size=3)
        r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        label = np.zeros(SHAPE, np.uint8)
        label[(r < 7) & brain] = 2
        label[(r < 4) & brain] = 4
        label[(r < 2) & brain] = 1
        for k, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            img = rng.normal(100, 10, SHAPE).astype(np.float32)
            img += (label > 0) * (30 + 10 * k) + (label == 4) * 40 * (mod == "t1ce")
            img[~brain] = 0
            nib.save(nib.Nifti1Image(img, affine), str(case / f"{cid}_{mod}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(case / f"{cid}_seg.nii.gz"))
    return root


@pytest.fixture(scope="session")
def tiny_brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_brats(tmp_path_factory.mktemp("brats") / "data")


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    return dict(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import json

    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


TINY_CONFIG = {
    "model": "unet",
    "model_kwargs": {"features": [8, 16, 32, 32]},
    "epochs": 3,
    "iters_per_epoch": 2,
    "batch_size": 2,
    "patch_size": [32, 32, 32],
    "lr": 0.003,
    "warmup_epochs": 0.5,
    "val_every": 1,
    "val_fraction": 0.25,
    "num_workers": 0,
    "augment": {"affine_prob": 0.3, "elastic_prob": 0.0},
}
