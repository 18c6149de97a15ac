"""Training-time augmentation built from MONAI dictionary transforms.

The recipe follows the seed paper (120 training cases expanded five-fold to 600 samples):
random flips, rotation and scaling, elastic deformation, intensity scale and shift, gamma and
Gaussian noise. ``build_augmentation`` returns a ``monai.transforms.Compose`` to use on the fly
in a ``monai.data.Dataset`` (``LoadPreprocessedd`` reads the preprocessed ``.npz`` files);
``transmed data augment`` materialises an expanded set on disk with the same pipeline.

Rotation and scaling share one ``RandAffined`` so that a sample is interpolated once for both.
Elastic deformation dominates the cost. On a 128³ 4-channel patch (2 shared CPU cores, median
CPU time of 8 samples): every other transform applied ~1.3 s, elastic alone ~1.5 s, all of them
~2.9 s; the defaults ~0.7 s. So it fires with a low probability by default
(``elastic_prob=0.1``; 0 removes it from the pipeline).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureTyped,
    MapTransform,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from transmed.transforms.store import load_arrays


def _range(name: str, value: tuple[float, float], low: float, high: float = math.inf) -> None:
    if len(value) != 2 or not all(math.isfinite(v) for v in value):
        raise ValueError(f"{name} must be two finite numbers, got {value!r}")
    if not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and ranges of the random augmentations.

    Attributes:
        flip_prob: probability of a flip along each of the three axes (independently).
        affine_prob: probability of a rotation + scaling (one interpolation).
        rotate_deg: rotation up to ± this many degrees about each axis.
        scale_range: isotropic-per-axis zoom factor range (1 = no change).
        elastic_prob: probability of an elastic deformation (expensive; 0 turns it off).
        elastic_sigma: smoothing of the random displacement field (voxels).
        elastic_magnitude: magnitude of the displacement before smoothing (MONAI's units).
        intensity_scale_prob, intensity_scale: multiply each channel by ``1 + U(-s, s)``.
        intensity_shift_prob, intensity_shift: add ``U(-s, s)`` to each channel (z-score units).
        gamma_prob, gamma_range: gamma on the min-max normalised image, mean/std retained.
        noise_prob, noise_std: additive Gaussian noise, std drawn from ``U(0, noise_std)``.
        seed: seed of the random state (``None``: not seeded).
    """

    flip_prob: float = 0.5
    affine_prob: float = 0.3
    rotate_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    elastic_prob: float = 0.1
    elastic_sigma: tuple[float, float] = (5.0, 8.0)
    elastic_magnitude: tuple[float, float] = (100.0, 200.0)
    intensity_scale_prob: float = 0.15
    intensity_scale: float = 0.1
    intensity_shift_prob: float = 0.15
    intensity_shift: float = 0.1
    gamma_prob: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.15
    noise_std: float = 0.1
    seed: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_prob"):
                p = getattr(self, f.name)
                if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
                    raise ValueError(f"{f.name} must be a probability in [0, 1], got {p!r}")
        if not (math.isfinite(self.rotate_deg) and 0 <= self.rotate_deg <= 180):
            raise ValueError(f"rotate_deg must be in [0, 180], got {self.rotate_deg!r}")
        _range("scale_range", tuple(self.scale_range), 1e-3)  # type: ignore[arg-type]
        _range("elastic_sigma", tuple(self.elastic_sigma), 1e-3)  # type: ignore[arg-type]
        _range("elastic_magnitude", tuple(self.elastic_magnitude), 0.0)  # type: ignore[arg-type]
        _range("gamma_range", tuple(self.gamma_range), 1e-3)  # type: ignore[arg-type]
        for name in ("intensity_scale", "intensity_shift", "noise_std"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.intensity_scale >= 1:
            raise ValueError(
                f"intensity_scale must be < 1 (factor 1 ± s), got {self.intensity_scale}"
            )
        if self.seed is not None and not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")


def build_augmentation(
    config: AugmentConfig | None = None, keys: Sequence[str] = ("image", "label")
) -> Compose:
    """The random augmentation pipeline for dict samples.

    Args:
        config: probabilities and ranges.
        keys: ``keys[0]`` is the image ``(C, D, H, W)`` (bilinear, intensity transforms); the
            other keys are label maps ``(1, D, H, W)`` moved by the same spatial transforms with
            nearest-neighbour interpolation. Arrays may be numpy or torch.

    Returns:
        A ``Compose`` whose output holds the image as float32 and labels as uint8 tensors, of
        unchanged shape. Seeded by ``config.seed`` when it is set.
    """
    config = config or AugmentConfig()
    keys = tuple(keys)
    if not keys:
        raise ValueError("keys must name at least the image key")
    image, labels = keys[0], keys[1:]
    modes = ("bilinear",) + ("nearest",) * len(labels)
    pads = ("zeros",) * len(keys)
    rot = math.radians(config.rotate_deg)
    lo, hi = config.scale_range
    transforms: list[Any] = [EnsureTyped(keys=keys, track_meta=False)]
    transforms += [RandFlipd(keys=keys, prob=config.flip_prob, spatial_axis=a) for a in range(3)]
    transforms.append(
        RandAffined(
            keys=keys,
            prob=config.affine_prob,
            rotate_range=(rot, rot, rot),
            # MONAI adds 1 to the sampled value; the same factor on every axis keeps shapes.
            scale_range=((lo - 1, hi - 1),) * 3,
            mode=modes,
            padding_mode=pads,
        )
    )
    if config.elastic_prob > 0:
        transforms.append(
            Rand3DElasticd(
                keys=keys,
                prob=config.elastic_prob,
                sigma_range=tuple(config.elastic_sigma),
                magnitude_range=tuple(config.elastic_magnitude),
                mode=modes,
                padding_mode=pads,
            )
        )
    s, o = config.intensity_scale, config.intensity_shift
    transforms += [
        RandScaleIntensityd(
            keys=image, factors=(-s, s), prob=config.intensity_scale_prob, channel_wise=True
        ),
        RandShiftIntensityd(
            keys=image, offsets=(-o, o), prob=config.intensity_shift_prob, channel_wise=True
        ),
        RandAdjustContrastd(
            keys=image, prob=config.gamma_prob, gamma=tuple(config.gamma_range), retain_stats=True
        ),
        RandGaussianNoised(keys=image, prob=config.noise_prob, std=config.noise_std),
        CastToTyped(keys=keys, dtype=(np.float32,) + (np.uint8,) * len(labels)),
    ]
    pipeline = Compose(transforms)
    if config.seed is not None:
        pipeline.set_random_state(seed=config.seed)
    return pipeline


class LoadPreprocessedd(MapTransform):
    """Read a preprocessed ``.npz`` named by ``data[path_key]`` into ``image`` and ``label``.

    ``image`` is ``(4, D, H, W) float32``; ``label`` gains a channel axis, ``(1, D, H, W)
    uint8``, as MONAI's dictionary transforms expect. Use as the first transform of a
    ``monai.data.Dataset`` whose items are ``{"path": ".../case.npz"}``.
    """

    def __init__(self, path_key: str = "path", image_key: str = "image", label_key: str = "label"):
        super().__init__(keys=[path_key])
        self.path_key, self.image_key, self.label_key = path_key, image_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image, label = load_arrays(Path(out[self.path_key]))
        out[self.image_key] = image
        if label is not None:
            out[self.label_key] = label[None]
        return out


def augment_sample(
    image: np.ndarray, label: np.ndarray | None, config: AugmentConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment one ``(C, D, H, W)`` image and optional ``(D, H, W)`` label with a fresh pipeline.

    Returns numpy arrays (float32, uint8) of the input shapes; ``config.seed`` fixes the draw.
    """
    keys = ("image",) if label is None else ("image", "label")
    sample: dict[str, Any] = {"image": image}
    if label is not None:
        sample["label"] = label[None]
    out = build_augmentation(config, keys)(sample)
    new_image = np.asarray(out["image"], dtype=np.float32)
    new_label = None if label is None else np.asarray(out["label"], dtype=np.uint8)[0]
    return new_image, new_label
