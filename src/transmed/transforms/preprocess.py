"""Reversible preprocessing: one module for training and inference alike.

Forward (``preprocess_case``), in this order:

1. orientation of the reference modality's grid to RAS (exact flips/permutations, nibabel);
2. the target grid: that RAS grid at ``target_spacing`` mm (``None`` keeps the reference's
   spacing), sharing its centre and field of view;
3. co-registration by the images' affines and resampling in ONE interpolation per modality:
   every modality (the reference too) is resampled from its own voxel array onto the target
   grid (trilinear, 0 outside its field of view); the label by nearest neighbour or one-hot
   linear interpolation. Modalities acquired on different grids (TCGA-FG-6692: three grids) end
   up voxel-aligned. An exact permutation map is a copy, so with ``target_spacing=None`` the
   reference and its label are not interpolated at all. With ``coregistration="rigid"`` a
   mutual-information rigid registration (:mod:`transmed.transforms.registration`) first
   corrects each non-reference series' affine for head motion between series;
4. crop to the foreground box (:mod:`transmed.transforms.foreground`) plus a margin in mm;
5. z-score per modality over the foreground mask; background set to 0.

The :class:`PreprocessRecord` keeps what the inverse needs; ``invert_labels`` and
``invert_probabilities`` take a prediction on the preprocessed grid back to the ORIGINAL
reference grid (uncrop with background, resample back, undo the orientation), to be written
with ``record.original_affine``.

The reference modality defaults to ``"t1ce"``: BraTS co-registers every series to T1ce, which
is usually the finest (often 3D) acquisition; ``"finest"`` picks the modality with the smallest
voxel volume (ties go to T1ce, then the fixed modality order).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transmed.data.labels import MODALITIES, N_CLASSES  # internal labels 0 bg, 1 NCR, 2 ED, 3 ET
from transmed.io.nifti import Volume
from transmed.transforms import foreground as fg
from transmed.transforms import spatial

RECORD_VERSION = 1
REFERENCE_CHOICES = (*MODALITIES, "finest")
COREGISTRATION_CHOICES = ("header", "rigid")
#: Isotropic spacing (mm) of the grid on which rigid registration is estimated.
REGISTRATION_SPACING = 2.0
_EPS = 1e-8


@dataclass(frozen=True)
class PreprocessConfig:
    """How to preprocess a case.

    Attributes:
        target_spacing: voxel size (mm) of the network grid along RAS axes; ``None`` keeps the
            reference modality's spacing (no resampling of the reference).
        reference: modality whose grid (after orientation to RAS) the others are resampled
            onto, or ``"finest"``.
        foreground: ``"auto"``, ``"nonzero"`` (skull-stripped) or ``"otsu"`` (head mask).
        margin_mm: margin (mm) kept around the foreground box on each side.
        label_interpolation: ``"nearest"`` or ``"linear"`` (one-hot trilinear, then argmax).
        coregistration: ``"header"`` aligns the series by their affines only (right for BraTS
            and other co-registered data); ``"rigid"`` adds a mutual-information rigid
            registration of each series to the reference (native-space clinical data, where
            the head moves between series; needs SimpleITK).
    """

    target_spacing: tuple[float, float, float] | None = None
    reference: str = "t1ce"
    foreground: str = "auto"
    margin_mm: float = 5.0
    label_interpolation: str = "linear"
    coregistration: str = "header"

    def __post_init__(self) -> None:
        if self.target_spacing is not None:
            spacing = tuple(self.target_spacing)
            if len(spacing) != 3 or not all(
                isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in spacing
            ):
                raise ValueError(
                    f"target_spacing must be None or three positive finite mm values, "
                    f"got {self.target_spacing!r}"
                )
            object.__setattr__(self, "target_spacing", tuple(float(s) for s in spacing))
        if self.reference not in REFERENCE_CHOICES:
            raise ValueError(
                f"reference must be one of {REFERENCE_CHOICES}, got {self.reference!r}"
            )
        if self.foreground not in fg.FOREGROUND_METHODS:
            raise ValueError(
                f"foreground must be one of {fg.FOREGROUND_METHODS}, got {self.foreground!r}"
            )
        if not (isinstance(self.margin_mm, (int, float)) and math.isfinite(self.margin_mm)) or (
            self.margin_mm < 0
        ):
            raise ValueError(f"margin_mm must be a finite number >= 0, got {self.margin_mm!r}")
        if self.label_interpolation not in ("nearest", "linear"):
            raise ValueError(
                "label_interpolation must be 'nearest' or 'linear', "
                f"got {self.label_interpolation!r}"
            )
        if self.coregistration not in COREGISTRATION_CHOICES:
            raise ValueError(
                f"coregistration must be one of {COREGISTRATION_CHOICES}, "
                f"got {self.coregistration!r}"
            )


@dataclass
class PreprocessRecord:
    """Everything needed to take a prediction back to the original reference grid (JSON-able).

    Grids, in pipeline order: original ``original_shape``/``original_affine`` → orientation
    ``ornt`` → RAS grid ``ras_shape`` → resampled grid ``resampled_shape``/``resampled_affine``
    (RAS index = ``scale * index + offset``) → crop ``crop_box`` (half-open, voxels of the
    resampled grid) → the preprocessed array.
    """

    modalities: tuple[str, ...]
    reference: str
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray  # (4, 4)
    ornt: np.ndarray  # (3, 2) original -> RAS
    ras_shape: tuple[int, int, int]
    target_spacing: tuple[float, float, float] | None
    resampled_shape: tuple[int, int, int]
    resampled_affine: np.ndarray  # (4, 4)
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    crop_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    foreground: str
    intensity_mean: tuple[float, ...]
    intensity_std: tuple[float, ...]
    case_id: str | None = None
    version: int = RECORD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape of the preprocessed array (voxels)."""
        return tuple(b - a for a, b in self.crop_box)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS affine of the preprocessed (cropped) array, e.g. to save it as NIfTI."""
        shift = np.eye(4)
        shift[:3, 3] = [a for a, _ in self.crop_box]
        return self.resampled_affine @ shift

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) of the preprocessed array."""
        return tuple(float(s) for s in np.linalg.norm(self.resampled_affine[:3, :3], axis=0))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (lists for arrays and tuples)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, np.ndarray):
                out[key] = value.tolist()
        return json.loads(json.dumps(out))  # tuples -> lists, numpy scalars refused early

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessRecord:
        """Rebuild a record from :meth:`to_dict` output; ``ValueError`` on a malformed one."""
        try:
            if int(data["version"]) != RECORD_VERSION:
                raise ValueError(f"unsupported record version {data['version']!r}")
            spacing = data["target_spacing"]
            record = cls(
                modalities=tuple(str(m) for m in data["modalities"]),
                reference=str(data["reference"]),
                original_shape=_int3(data["original_shape"]),
                original_affine=_matrix(data["original_affine"], (4, 4)),
                ornt=_matrix(data["ornt"], (3, 2)),
                ras_shape=_int3(data["ras_shape"]),
                target_spacing=None if spacing is None else tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                resampled_shape=_int3(data["resampled_shape"]),
                resampled_affine=_matrix(data["resampled_affine"], (4, 4)),
                scale=tuple(float(s) for s in data["scale"]),  # type: ignore[arg-type]
                offset=tuple(float(s) for s in data["offset"]),  # type: ignore[arg-type]
                crop_box=tuple((int(a), int(b)) for a, b in data["crop_box"]),  # type: ignore[arg-type]
                foreground=str(data["foreground"]),
                intensity_mean=tuple(float(v) for v in data["intensity_mean"]),
                intensity_std=tuple(float(v) for v in data["intensity_std"]),
                case_id=None if data.get("case_id") is None else str(data["case_id"]),
                version=RECORD_VERSION,
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed preprocessing record: {exc!r}") from None
        if len(record.crop_box) != 3 or any(
            not 0 <= a < b <= n
            for (a, b), n in zip(record.crop_box, record.resampled_shape, strict=True)
        ):
            raise ValueError(f"crop_box {record.crop_box} does not fit {record.resampled_shape}")
        return record


def _int3(values: Sequence[Any]) -> tuple[int, int, int]:
    out = tuple(int(v) for v in values)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"expected three positive integers, got {values!r}")
    return out  # type: ignore[return-value]


def _matrix(values: Any, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise ValueError(f"expected a finite {shape} matrix, got {arr.shape}")
    return arr


@dataclass
class PreprocessedCase:
    """Network-ready case: ``image (4, D, H, W) float32``, ``label (D, H, W) uint8 | None``."""

    image: np.ndarray
    label: np.ndarray | None
    record: PreprocessRecord


def _as_modality_dict(images: Mapping[str, Volume] | Sequence[Volume]) -> dict[str, Volume]:
    if isinstance(images, Mapping):
        missing = [m for m in MODALITIES if m not in images]
        unknown = [m for m in images if m not in MODALITIES]
        if missing or unknown:
            raise ValueError(
                f"images must have exactly the modalities {MODALITIES}; "
                f"missing {missing}, unknown {unknown}"
            )
        out = {m: images[m] for m in MODALITIES}
    else:
        if len(images) != len(MODALITIES):
            raise ValueError(
                f"expected {len(MODALITIES)} volumes in the order {MODALITIES}, got {len(images)}"
            )
        out = dict(zip(MODALITIES, images, strict=True))
    for name, vol in out.items():
        where = f" ({vol.path})" if vol.path is not None else ""
        if np.asarray(vol.data).ndim != 3:
            raise ValueError(f"modality {name}{where}: expected a 3D image, got {vol.data.shape}")
        if np.asarray(vol.affine).shape != (4, 4):
            raise ValueError(f"modality {name}{where}: affine must be 4x4")
        if not np.all(np.isfinite(vol.data)):
            raise ValueError(f"modality {name}{where}: contains NaN or Inf")
    return out


def choose_reference(images: Mapping[str, Volume], reference: str) -> str:
    """Resolve ``"finest"`` to the modality with the smallest voxel volume (ties: T1ce first)."""
    if reference != "finest":
        return reference
    preference = ("t1ce", *[m for m in MODALITIES if m != "t1ce"])
    volumes = {m: float(np.prod(images[m].spacing)) for m in preference}
    return min(preference, key=lambda m: (round(volumes[m], 6), preference.index(m)))


def _zscore(
    channel: np.ndarray, mask: np.ndarray, out: np.ndarray, outside: np.ndarray
) -> tuple[float, float]:
    """Z-score ``channel`` by its foreground statistics into ``out`` (float32), 0 outside.

    Written in place (no temporaries the size of the volume): preprocessing is memory-bound.
    """
    values = channel[mask].astype(np.float64)
    mean = float(values.mean())
    std = float(values.std())
    np.subtract(channel, np.float32(mean), out=out, casting="unsafe")
    np.divide(out, np.float32(max(std, _EPS)), out=out)
    out[outside] = 0.0
    return mean, std


def preprocess_case(
    images: Mapping[str, Volume] | Sequence[Volume],
    label: Volume | None = None,
    config: PreprocessConfig | None = None,
    *,
    case_id: str | None = None,
) -> PreprocessedCase:
    """Preprocess one case for the network (see the module docstring for the steps).

    Args:
        images: the four modalities as ``{name: Volume}`` or a sequence in ``MODALITIES`` order;
            each keeps its own affine and may be on its own grid.
        label: optional label ``Volume`` (uint8 internal convention 0/1/2/3), on any grid.
        config: preprocessing options (defaults: reference spacing, T1ce reference).
        case_id: stored in the record.

    Returns:
        ``PreprocessedCase(image (4, D, H, W) float32, label (D, H, W) uint8 | None, record)``.

    Raises:
        ValueError: missing modality, non-3D or non-finite image, label values outside 0..3,
            or no foreground at all.
    """
    config = config or PreprocessConfig()
    vols = _as_modality_dict(images)
    ref_name = choose_reference(vols, config.reference)
    ref = vols[ref_name]
    original = spatial.Grid(ref.shape3d, np.asarray(ref.affine, dtype=np.float64))
    ornt = spatial.ras_orientation(original.affine)
    ras = spatial.reorient_grid(original, ornt)
    target, scale, offset = spatial.spacing_grid(ras, config.target_spacing)

    affines = {m: np.asarray(vols[m].affine, dtype=np.float64) for m in MODALITIES}
    extra: dict[str, Any] = {}
    if config.coregistration == "rigid":
        motions = _rigid_motions(vols, ref_name, ras, config.foreground)
        extra["rigid_world_transforms"] = {m: w.tolist() for m, w in motions.items()}
        # Fold the motion into the affine: the series is still interpolated once.
        affines.update({m: np.linalg.inv(w) @ affines[m] for m, w in motions.items()})

    # One interpolation per modality, straight from its own voxels. Kept as four arrays, not
    # stacked: only the cropped region is ever copied again (preprocessing is memory-bound).
    channels = [
        np.asarray(spatial.resample_to_grid(vols[m].data, affines[m], target, order=1),
                   dtype=np.float32)
        for m in MODALITIES
    ]  # fmt: skip

    method = fg.choose_method(np.asarray(ref.data), config.foreground)
    mask = fg.foreground_mask(channels, method)
    if not mask.any():
        raise ValueError(f"case {case_id or ''}: no foreground found (all-zero images?)")
    margin = tuple(int(math.ceil(config.margin_mm / s - 1e-9)) for s in target.spacing)
    box = fg.bounding_box(mask, margin)  # type: ignore[arg-type]
    crop = tuple(slice(a, b) for a, b in box)
    mask = mask[crop]

    image = np.empty((len(channels), *mask.shape), dtype=np.float32)  # (4, D, H, W)
    outside = ~mask
    means, stds = [], []
    for channel, out in zip(channels, image, strict=True):
        mean, std = _zscore(channel[crop], mask, out, outside)
        means.append(mean)
        stds.append(std)
    del channels

    out_label = None
    if label is not None:
        lab = np.asarray(label.data)
        if lab.ndim != 3:
            raise ValueError(f"label: expected a 3D label map, got shape {lab.shape}")
        if lab.size and (
            lab.min() < 0 or lab.max() >= N_CLASSES or not np.all(lab == np.rint(lab))
        ):
            raise ValueError(
                f"label{f' ({label.path})' if label.path else ''}: values must be integers in "
                f"0..{N_CLASSES - 1} (internal convention), got {np.unique(lab)[:10].tolist()}"
            )
        out_label = spatial.resample_labels_to_grid(
            lab.astype(np.uint8),
            label.affine,
            target,
            n_classes=N_CLASSES,
            method=config.label_interpolation,
        )[crop]

    record = PreprocessRecord(
        modalities=tuple(MODALITIES),
        reference=ref_name,
        original_shape=original.shape,
        original_affine=original.affine,
        ornt=np.asarray(ornt, dtype=np.float64),
        ras_shape=ras.shape,
        target_spacing=config.target_spacing,
        resampled_shape=target.shape,
        resampled_affine=target.affine,
        scale=tuple(float(s) for s in scale),  # type: ignore[arg-type]
        offset=tuple(float(o) for o in offset),  # type: ignore[arg-type]
        crop_box=box,  # type: ignore[arg-type]
        foreground=method,
        intensity_mean=tuple(means),
        intensity_std=tuple(stds),
        case_id=case_id,
        extra=extra,
    )
    return PreprocessedCase(image=image, label=out_label, record=record)


def _rigid_motions(
    vols: Mapping[str, Volume], ref_name: str, ras: spatial.Grid, foreground: str
) -> dict[str, np.ndarray]:
    """World rigid transform (reference -> series) of every non-reference series."""
    from transmed.transforms.registration import rigid_register

    grid, _, _ = spatial.spacing_grid(ras, (REGISTRATION_SPACING,) * 3)
    fixed = spatial.resample_to_grid(vols[ref_name].data, vols[ref_name].affine, grid, order=1)
    method = fg.choose_method(np.asarray(vols[ref_name].data), foreground)
    mask = fg.foreground_mask(fixed[None], method)
    motions = {}
    for m in MODALITIES:
        if m == ref_name:
            continue
        moving = spatial.resample_to_grid(vols[m].data, vols[m].affine, grid, order=1)
        motions[m] = rigid_register(fixed, moving, grid.affine, fixed_mask=mask)
    return motions


def _network_to_ras_matrix(record: PreprocessRecord) -> np.ndarray:
    scale, offset = np.asarray(record.scale), np.asarray(record.offset)
    # RAS index i = scale * j + offset  =>  j = i / scale - offset / scale.
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(1.0 / scale)
    matrix[:3, 3] = -offset / scale
    return matrix


def is_exact_grid(record: PreprocessRecord) -> bool:
    """True when the network grid is the original grid up to axis flips, permutation and crop
    (no resampling): then labels taken on the network grid and mapped back voxel for voxel
    equal labels taken from probabilities mapped back, and the cheaper path may be used."""
    return spatial._is_integer_mapping(_network_to_ras_matrix(record))


def _to_original(
    array: np.ndarray, record: PreprocessRecord, *, order: int, fill: float
) -> np.ndarray:
    """One ``(D, H, W)`` map on the preprocessed grid -> ``original_shape``."""
    if array.shape != record.shape:
        raise ValueError(
            f"prediction has spatial shape {array.shape}, the record expects {record.shape}"
        )
    full = np.full(record.resampled_shape, fill, dtype=array.dtype)
    full[tuple(slice(a, b) for a, b in record.crop_box)] = array
    matrix = _network_to_ras_matrix(record)
    ras = spatial.resample_array(full, matrix, record.ras_shape, order=order, outside="edge")
    out = spatial.reorient(ras, spatial.inverse_orientation(record.ornt))
    if out.shape != tuple(record.original_shape):  # pragma: no cover - geometry invariant
        raise RuntimeError(f"inverse produced {out.shape}, expected {record.original_shape}")
    return out


def invert_labels(labels: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Integer label map ``(D, H, W)`` on the preprocessed grid -> the original reference grid.

    Uncropped with background 0, resampled back by nearest neighbour, orientation undone.
    Returns ``original_shape`` uint8, to be saved with ``record.original_affine``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (D, H, W), got shape {labels.shape}")
    return _to_original(labels.astype(np.uint8), record, order=0, fill=0)


def invert_probabilities(
    probs: np.ndarray, record: PreprocessRecord, *, fill: float | Sequence[float] = 0.0
) -> np.ndarray:
    """Probabilities ``(C, D, H, W)`` on the preprocessed grid -> ``(C, *original_shape)``.

    Each channel is uncropped with ``fill`` (a number or one per channel: use
    ``(1, 0, 0, 0)`` for softmax classes with background first, 0 for sigmoid regions),
    resampled back trilinearly and reoriented. Argmax or thresholding is the caller's job.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4:
        raise ValueError(f"probabilities must be (C, D, H, W), got shape {probs.shape}")
    fills = [float(fill)] * probs.shape[0] if np.isscalar(fill) else [float(f) for f in fill]  # type: ignore[arg-type]
    if len(fills) != probs.shape[0]:
        raise ValueError(f"fill has {len(fills)} values for {probs.shape[0]} channels")
    return np.stack(
        [_to_original(p, record, order=1, fill=f) for p, f in zip(probs, fills, strict=True)]
    ).astype(np.float32)
