"""Tiny sites that differ (spheres in noise, site-specific contrast and case counts)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from transmed.federated.sites import SiteProfile, apply_site_protocol

SHAPE = (24, 24, 16)
TRAIN = {"model": "unet", "patch_size": [16, 16, 16], "iters_per_epoch": 2, "batch_size": 2,
         "model_kwargs": {"features": [4, 8], "encoder_blocks": [1, 1], "decoder_blocks": [1]},
         "num_workers": 0, "augment": {"elastic_prob": 0.0, "affine_prob": 0.0}}  # fmt: skip


def write_tiny_site(root: Path, profile: SiteProfile, seed: int = 0) -> Path:
    """``profile.n_cases`` BraTS-2021-layout cases with the site's contrast and noise."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    brain = ((zz - 12) / 11) ** 2 + ((yy - 12) / 11) ** 2 + ((xx - 8) / 7.5) ** 2 < 1
    for i in range(profile.n_cases):
        cid = f"BraTS2021_{profile.index_offset + i:05d}"
        case = root / cid
        case.mkdir(parents=True)
        c = rng.integers(8, 15, size=3) - np.array([0, 0, 4])
        r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        label = np.zeros(SHAPE, np.uint8)
        label[(r < 5) & brain] = 2
        label[(r < 3) & brain] = 4
        label[(r < 1.5) & brain] = 1
        images = {}
        for k, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            img = rng.normal(300, 30, SHAPE)
            img += (label > 0) * (90 + 30 * k) + (label == 4) * 120 * (mod == "t1ce")
            img[~brain] = 0
            images[mod] = np.clip(img, 0, None).astype(np.int16)
        images = apply_site_protocol(images, profile, rng)
        for mod, img in images.items():
            nib.save(nib.Nifti1Image(img, np.eye(4)), str(case / f"{cid}_{mod}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(case / f"{cid}_seg.nii.gz"))
    return root


@pytest.fixture(scope="session")
def tiny_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    profiles = [SiteProfile("A", 5, SHAPE, index_offset=0),
                SiteProfile("B", 3, SHAPE, gamma={"t1ce": 1.5}, noise=0.05, index_offset=100),
                SiteProfile("test", 2, SHAPE, index_offset=900)]  # fmt: skip
    return {p.name: write_tiny_site(root / p.name, p, seed=k) for k, p in enumerate(profiles)}


@pytest.fixture
def tiny_train() -> dict:
    return dict(TRAIN)
