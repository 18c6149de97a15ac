"""MONAI augmentation pipeline, the preprocessed-array store and the preprocess/augment commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from transmed.cli import app
from transmed.io.nifti import save_volume
from transmed.transforms.augment import (
    AugmentConfig,
    LoadPreprocessedd,
    augment_sample,
    build_augmentation,
)
from transmed.transforms.store import load_arrays, load_record, save_arrays

ALL_ON = dict(
    flip_prob=1.0,
    affine_prob=1.0,
    elastic_prob=1.0,
    elastic_sigma=(3.0, 4.0),
    intensity_scale_prob=1.0,
    intensity_shift_prob=1.0,
    gamma_prob=1.0,
    noise_prob=1.0,
)
SPATIAL_ONLY = dict(
    ALL_ON, intensity_scale_prob=0.0, intensity_shift_prob=0.0, gamma_prob=0.0, noise_prob=0.0
)


def _sample(shape=(24, 28, 20), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (4, X, Y, Z) image and (X, Y, Z) labels made of nested boxes (values 0..3)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    label[4:20, 5:22, 3:17] = 2
    label[7:15, 9:18, 6:13] = 1
    label[9:13, 11:15, 8:11] = 3
    image = rng.normal(size=(4, *shape)).astype(np.float32) + label[None].astype(np.float32)
    return image, label


def test_output_shapes_dtypes_and_label_values() -> None:
    image, label = _sample()
    out = build_augmentation(AugmentConfig(**ALL_ON, seed=3))(
        {"image": image, "label": label[None]}
    )
    assert tuple(out["image"].shape) == image.shape and out["image"].dtype == torch.float32
    assert tuple(out["label"].shape) == (1, *label.shape) and out["label"].dtype == torch.uint8
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2, 3}
    assert not np.allclose(np.asarray(out["image"]), image)  # something happened


def test_same_seed_same_sample_other_seed_other_sample() -> None:
    image, label = _sample()
    a = augment_sample(image, label, AugmentConfig(**ALL_ON, seed=7))
    b = augment_sample(image, label, AugmentConfig(**ALL_ON, seed=7))
    c = augment_sample(image, label, AugmentConfig(**ALL_ON, seed=8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_stays_aligned_with_the_image(seed: int) -> None:
    """Channel 0 is 10 × (label > 0): thresholding it after augmentation gives the label back."""
    image, label = _sample()
    image[0] = 10.0 * (label > 0)
    new_image, new_label = augment_sample(image, label, AugmentConfig(**SPATIAL_ONLY, seed=seed))
    moved = new_image[0] > 5.0
    tumour = new_label > 0
    assert not np.array_equal(tumour, label > 0)  # the spatial transforms did move it
    dice = 2 * np.logical_and(moved, tumour).sum() / (moved.sum() + tumour.sum())
    assert dice > 0.95


def test_image_only_pipeline() -> None:
    image, _ = _sample()
    out_image, out_label = augment_sample(image, None, AugmentConfig(**ALL_ON, seed=0))
    assert out_label is None and out_image.shape == image.shape


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flip_prob": 1.5},
        {"noise_prob": -0.1},
        {"rotate_deg": -5.0},
        {"scale_range": (1.2, 0.8)},
        {"gamma_range": (0.0, 1.0)},
        {"elastic_sigma": (5.0, float("inf"))},
        {"intensity_scale": 1.0},
        {"noise_std": -1.0},
        {"seed": -1},
    ],
)
def test_bad_config_is_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_composes_with_a_monai_dataset(tmp_path: Path) -> None:
    from monai.data import Dataset
    from monai.transforms import Compose

    image, label = _sample()
    path = save_arrays(tmp_path / "c.npz", image, label)
    pipeline = Compose([LoadPreprocessedd(), build_augmentation(AugmentConfig(seed=0))])
    item = Dataset(data=[{"path": str(path)}], transform=pipeline)[0]
    assert tuple(item["image"].shape) == image.shape
    assert tuple(item["label"].shape) == (1, *label.shape)


def test_store_refuses_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_arrays(bad)
    np.savez(tmp_path / "noimage.npz", label=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="no 'image'"):
        load_arrays(tmp_path / "noimage.npz")


def _write_brats2021(root: Path, n_cases: int = 2, shape=(24, 24, 20)) -> None:
    """A tiny BraTS 2021 folder: LAS grid, tumour labelled 1/2/4 (BraTS's ET value)."""
    affine = np.diag([-1.2, 1.2, 1.5, 1.0])
    affine[:3, 3] = (14, -14, -15)
    for i in range(n_cases):
        case = f"BraTS2021_{i:05d}"
        folder = root / case
        image, label = _sample(shape, seed=i)
        brain = np.zeros(shape, dtype=bool)
        brain[2:22, 2:22, 1:19] = True
        for c, modality in enumerate(("t1", "t1ce", "t2", "flair")):
            data = np.where(brain, 100.0 + 20 * c + 10 * image[c], 0.0).astype(np.float32)
            save_volume(data, affine, folder / f"{case}_{modality}.nii.gz")
        seg = np.select([label == 3, label == 1, label == 2], [4, 1, 2], 0).astype(np.uint8)
        save_volume(seg, affine, folder / f"{case}_seg.nii.gz")


def test_preprocess_and_augment_commands(tmp_path: Path) -> None:
    raw, pre, aug = tmp_path / "raw", tmp_path / "pre", tmp_path / "aug"
    _write_brats2021(raw)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["data", "preprocess", "--data", str(raw), "--out", str(pre), "--spacing", "2", "2", "2"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((pre / "dataset.json").read_text())
    assert [c["case_id"] for c in summary["cases"]] == ["BraTS2021_00000", "BraTS2021_00001"]
    image, label = load_arrays(pre / "BraTS2021_00000.npz")
    record = load_record(pre / "BraTS2021_00000.json")
    assert image.shape == (4, *record.shape) and label is not None and label.shape == record.shape
    assert record.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 3} and 3 in label  # BraTS 4 -> 3
    assert record.foreground == "nonzero"

    args = ["data", "augment", "--data", str(pre), "--out", str(aug), "--augment-factor", "3"]
    result = runner.invoke(app, [*args, "--seed", "5"])
    assert result.exit_code == 0, result.output
    listing = json.loads((aug / "dataset.json").read_text())
    assert len(listing["samples"]) == 6
    first, _ = load_arrays(aug / "BraTS2021_00000_aug0.npz")
    np.testing.assert_array_equal(first, image)  # sample 0 is the case itself
    one, one_label = load_arrays(aug / "BraTS2021_00000_aug1.npz")
    assert one.shape == image.shape and one_label is not None
    assert set(np.unique(one_label).tolist()) <= {0, 1, 2, 3}
    again = tmp_path / "again"
    assert (
        runner.invoke(
            app,
            [
                "data",
                "augment",
                "--data",
                str(pre),
                "--out",
                str(again),
                "--augment-factor",
                "3",
                "--seed",
                "5",
            ],
        ).exit_code
        == 0
    )
    np.testing.assert_array_equal(
        load_arrays(again / "BraTS2021_00001_aug2.npz")[0],
        load_arrays(aug / "BraTS2021_00001_aug2.npz")[0],
    )

    # A raw folder is not a preprocessed one: a clear error, not a traceback.
    result = runner.invoke(app, ["data", "augment", "--data", str(raw), "--out", str(aug)])
    assert result.exit_code == 1 and "preprocess" in result.output
