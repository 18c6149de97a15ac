"""Tiny fake datasets (12³ volumes written with nibabel) in each supported layout.

Every image of modality ``m`` holds noise around ``MOD_OFFSET[m]``, so a test can tell which
file a loaded modality came from; every label file holds ``INTERNAL`` written in its layout's
own values.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from transmed.data.labels import MODALITIES

SHAPE = (12, 12, 12)
AFFINE = np.array(
    [[1.2, 0, 0, -7.0], [0, 1.0, 0, -6.0], [0, 0, 2.0, -12.0], [0, 0, 0, 1]], dtype=np.float64
)
MOD_OFFSET = {m: 100.0 * (i + 1) for i, m in enumerate(MODALITIES)}  # t1 100 ... flair 400


def internal_labels(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """All four internal classes: oedema shell, core, enhancing centre."""
    lab = np.zeros(shape, dtype=np.uint8)
    lab[2:10, 2:10, 2:10] = 2
    lab[4:8, 4:8, 4:8] = 1
    lab[5:7, 5:7, 5:7] = 3
    return lab


INTERNAL = internal_labels()
#: Each layout's file value for internal 0 bg, 1 core, 2 oedema, 3 enhancing, written out by
#: hand from the datasets' documentation (independent of the code under test).
RAW_VALUE = {
    "brats2021": (0, 1, 2, 4),  # NCR 1, ED 2, ET 4
    "brats2023": (0, 1, 2, 3),  # NETC 1, SNFH 2, ET 3
    "msd": (0, 2, 1, 3),  # 1 oedema, 2 non-enhancing, 3 enhancing
    "nnunet": (0, 2, 1, 3),  # nnU-Net's BraTS conversions: 1 ED, 2 NCR, 3 ET
}


def raw_labels(layout: str, internal: np.ndarray = INTERNAL) -> np.ndarray:
    return np.asarray(RAW_VALUE[layout], dtype=np.uint8)[internal]


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def image(modality: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (MOD_OFFSET[modality] + rng.normal(0, 1, SHAPE)).astype(np.float32)


BRATS_NAMES = {
    "brats2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}),
    "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}),
}
#: dataset.json channel orders deliberately different from MSD's default (FLAIR, T1w, T1gd, T2w).
MSD_MODALITY = {"0": "T1w", "1": "FLAIR", "2": "T2w", "3": "t1gd"}
MSD_NAMES = {"T1w": "t1", "FLAIR": "flair", "T2w": "t2", "t1gd": "t1ce"}
NNUNET_CHANNELS = {"0": "T2", "1": "T1n", "2": "t1-gd", "3": "FLAIR"}
NNUNET_CLASS_LABELS = {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
NNUNET_REGION_LABELS = {
    "background": 0,
    "whole tumor": [1, 2, 3],
    "tumor core": [2, 3],
    "enhancing tumor": [3],
}


def case_ids(layout: str, n: int, prefix: str = "GLI") -> list[str]:
    pattern = {
        "brats2021": "BraTS2021_{:05d}",
        "brats2023": f"BraTS-{prefix}-{{:05d}}-000",
        "msd": "BRATS_{:03d}",
        "nnunet": "BraTS_{:04d}",
    }[layout]
    return [pattern.format(i) for i in range(n)]


def write_dataset(
    root: Path,
    layout: str,
    n: int = 2,
    *,
    labelled: bool = True,
    prefix: str = "GLI",
    n_test: int = 0,
    nnunet_labels: dict | None = None,
) -> list[str]:
    """Write ``n`` training cases (and ``n_test`` unlabelled test cases for MSD/nnU-Net).

    Returns the case ids, training cases first.
    """
    ids = case_ids(layout, n + n_test, prefix)
    if layout in BRATS_NAMES:
        sep, names = BRATS_NAMES[layout]
        for i, cid in enumerate(ids):
            for m in MODALITIES:
                write_nifti(root / cid / f"{cid}{sep}{names[m]}.nii.gz", image(m, i))
            if labelled:
                seg = raw_labels(layout)
                write_nifti(root / cid / f"{cid}{sep}seg.nii.gz", seg)
        return ids
    if layout == "msd":
        order = {MSD_NAMES[name]: int(k) for k, name in MSD_MODALITY.items()}
        meta = {
            "modality": MSD_MODALITY,
            "labels": {
                "0": "background",
                "1": "edema",
                "2": "non-enhancing tumor",
                "3": "enhancing tumour",
            },
            "training": [
                {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                for c in ids[:n]
            ],
        }
        for i, cid in enumerate(ids):
            stack = np.zeros((*SHAPE, 4), dtype=np.float32)
            for m, c in order.items():
                stack[..., c] = image(m, i)
            sub = "imagesTr" if i < n else "imagesTs"
            write_nifti(root / sub / f"{cid}.nii.gz", stack)
            if labelled and i < n:
                write_nifti(root / "labelsTr" / f"{cid}.nii.gz", raw_labels("msd"))
    else:
        labels = nnunet_labels or NNUNET_CLASS_LABELS
        meta = {
            "channel_names": NNUNET_CHANNELS,
            "labels": labels,
            "numTraining": n,
            "file_ending": ".nii.gz",
        }
        alias = {"T2": "t2", "T1n": "t1", "t1-gd": "t1ce", "FLAIR": "flair"}
        for i, cid in enumerate(ids):
            sub = "imagesTr" if i < n else "imagesTs"
            for k, name in NNUNET_CHANNELS.items():
                write_nifti(root / sub / f"{cid}_{int(k):04d}.nii.gz", image(alias[name], i))
            if labelled and i < n:
                # Both the class style and nnU-Net's region style use raw 1 ED, 2 NCR, 3 ET.
                write_nifti(root / "labelsTr" / f"{cid}.nii.gz", raw_labels("nnunet"))
    (root / "dataset.json").write_text(json.dumps(meta))
    return ids
