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
   corrects each non-reference series' affine for head motion between series; with ``"auto"``
   the evidence decides per series (:func:`~transmed.transforms.registration.coregister`:
   registered when another frame of reference says so, or when a coarse registration after
   header alignment finds motion; data already on one grid and skull-stripped are kept as
   they are). Thick slices (TCGA-FG-6692: 5.5 mm) are interpolated trilinearly onto the grid;
4. brain extraction (``brain_extraction``, :mod:`transmed.transforms.brain_extraction`) on the
   reference series when it is not skull-stripped already; the mask, on the reference grid,
   is carried to every other series through the co-registration above (it is the foreground);
5. crop to the foreground box (:mod:`transmed.transforms.foreground`) plus a margin in mm;
6. optionally (``bias_correction="n4"``), N4 bias-field correction of each series inside the
   foreground mask (:mod:`transmed.transforms.bias_field`);
7. z-score per modality over the foreground mask; background set to 0. A missing series (when
   ``missing_modalities="zero"``) is a channel of zeros, i.e. its z-scored mean.

What was decided and measured (brain mask, registration transforms and residuals, missing
series, warnings, seconds per step) is kept in ``record.extra`` for the provenance.

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
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transmed.data.labels import MODALITIES, N_CLASSES  # internal labels 0 bg, 1 NCR, 2 ED, 3 ET
from transmed.io.nifti import Volume
from transmed.transforms import bias_field, spatial
from transmed.transforms import brain_extraction as bx
from transmed.transforms import foreground as fg

RECORD_VERSION = 1
REFERENCE_CHOICES = (*MODALITIES, "finest")
COREGISTRATION_CHOICES = ("header", "rigid", "auto")
BRAIN_EXTRACTION_CHOICES = bx.BRAIN_EXTRACTION_CHOICES
MISSING_CHOICES = ("error", "zero")
BIAS_CORRECTION_CHOICES = bias_field.BIAS_CORRECTION_CHOICES
#: Isotropic spacing (mm) of the grid on which rigid registration is estimated. 3 mm: clinical
#: slices are 3-6 mm thick anyway, and on TCGA-FG-6692 it gives the 2 mm grid's transforms
#: (within 0.3 mm, 0.2°) at 40 % of the time.
REGISTRATION_SPACING = 3.0
#: Series registered at once (threads; each ITK registration is single-threaded).
REGISTRATION_WORKERS = 2
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
            the head moves between series; needs SimpleITK); ``"auto"`` registers a series
            only when the evidence says so (see the module doc).
        brain_extraction: ``"auto"`` (deepbet on the reference series unless the input is
            skull-stripped already), ``"on"`` (always) or ``"off"``.
        missing_modalities: ``"zero"``: a missing series becomes a zero channel (the model
            was trained with modality dropout; the reference series stays required);
            ``"error"``: a missing series is an error naming what is missing.
        bias_correction: ``"n4"`` divides each series by its N4 bias field, fitted inside the
            foreground mask, before z-scoring; ``"n4_two_pass"`` leaves preprocessing as it
            is and has the predictor fit the field without the tumour of a first pass (see
            :mod:`transmed.transforms.bias_field`); ``"off"`` (the default) does neither.
    """

    target_spacing: tuple[float, float, float] | None = None
    reference: str = "t1ce"
    foreground: str = "auto"
    margin_mm: float = 5.0
    label_interpolation: str = "linear"
    coregistration: str = "header"
    brain_extraction: str = "off"
    missing_modalities: str = "error"
    bias_correction: str = "off"

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
        if self.brain_extraction not in BRAIN_EXTRACTION_CHOICES:
            raise ValueError(
                f"brain_extraction must be one of {BRAIN_EXTRACTION_CHOICES}, "
                f"got {self.brain_extraction!r}"
            )
        if self.bias_correction not in BIAS_CORRECTION_CHOICES:
            raise ValueError(
                f"bias_correction must be one of {BIAS_CORRECTION_CHOICES}, "
                f"got {self.bias_correction!r}"
            )
        if self.missing_modalities not in MISSING_CHOICES:
            raise ValueError(
                f"missing_modalities must be one of {MISSING_CHOICES}, "
                f"got {self.missing_modalities!r}"
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
    """Network-ready case: ``image (4, D, H, W) float32``, ``label (D, H, W) uint8 | None``,
    and ``mask (D, H, W) bool``: the brain (or foreground) the image was z-scored over; the
    image is 0 outside it."""

    image: np.ndarray
    label: np.ndarray | None
    record: PreprocessRecord
    mask: np.ndarray | None = None


def _as_modality_dict(
    images: Mapping[str, Volume | None] | Sequence[Volume | None],
    *,
    allow_missing: bool = False,
    required: str = "t1ce",
) -> dict[str, Volume | None]:
    """The four modalities by name; ``None`` for a missing one (only when ``allow_missing``)."""
    if isinstance(images, Mapping):
        unknown = [m for m in images if m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected {list(MODALITIES)}")
        out = {m: images.get(m) for m in MODALITIES}
    else:
        if len(images) != len(MODALITIES):
            raise ValueError(
                f"expected {len(MODALITIES)} volumes in the order {MODALITIES}, got {len(images)}"
            )
        out = dict(zip(MODALITIES, images, strict=True))
    missing = [m for m, v in out.items() if v is None]
    if missing and (not allow_missing or required in missing):
        accepted = (
            f"this model accepts missing series except {required}" if allow_missing else
            f"this model needs all of {', '.join(MODALITIES)}"
        )  # fmt: skip
        raise ValueError(f"missing series: {', '.join(missing)}; {accepted}")
    for name, vol in out.items():
        if vol is None:
            continue
        where = f" ({vol.path})" if vol.path is not None else ""
        if np.asarray(vol.data).ndim != 3:
            raise ValueError(f"modality {name}{where}: expected a 3D image, got {vol.data.shape}")
        if np.asarray(vol.affine).shape != (4, 4):
            raise ValueError(f"modality {name}{where}: affine must be 4x4")
        if not np.all(np.isfinite(vol.data)):
            raise ValueError(f"modality {name}{where}: contains NaN or Inf")
    return out


def _series_name(name: str, vol: Volume) -> str:
    return f"{name} ({vol.path.name})" if vol.path is not None else name


def choose_reference(images: Mapping[str, Volume | None], reference: str) -> str:
    """Resolve ``"finest"`` to the modality with the smallest voxel volume (ties: T1ce first)."""
    if reference != "finest":
        return reference
    preference = ("t1ce", *[m for m in MODALITIES if m != "t1ce" and images.get(m) is not None])
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
    images: Mapping[str, Volume | None] | Sequence[Volume | None],
    label: Volume | None = None,
    config: PreprocessConfig | None = None,
    *,
    case_id: str | None = None,
    series_info: Mapping[str, Mapping[str, Any]] | None = None,
    force: bool = False,
    device: str = "cpu",
) -> PreprocessedCase:
    """Preprocess one case for the network (see the module docstring for the steps).

    Args:
        images: the four modalities as ``{name: Volume}`` or a sequence in ``MODALITIES`` order;
            each keeps its own affine and may be on its own grid. A missing one is absent or
            ``None`` (allowed only with ``config.missing_modalities="zero"``).
        label: optional label ``Volume`` (uint8 internal convention 0/1/2/3), on any grid.
        config: preprocessing options (defaults: reference spacing, T1ce reference).
        case_id: stored in the record.
        series_info: optional per-modality facts about the series (DICOM:
            ``frame_of_reference_uid``); a series whose frame of reference differs from the
            reference's is registered without the evidence check (``coregistration="auto"``).
        force: an implausible brain mask becomes a warning in the record instead of an error.
        device: torch device for brain extraction.

    Returns:
        ``PreprocessedCase(image (4, D, H, W) float32, label (D, H, W) uint8 | None, record)``.

    Raises:
        ValueError: missing modality, non-3D or non-finite image, label values outside 0..3,
            or no foreground at all.
        BrainMaskError: an implausible brain mask (without ``force``), naming the series.
        RegistrationError: a series that cannot be registered, named.
    """
    config = config or PreprocessConfig()
    t_start = time.perf_counter()
    vols = _as_modality_dict(images, allow_missing=config.missing_modalities == "zero")
    present = [m for m in MODALITIES if vols[m] is not None]
    ref_name = choose_reference(vols, config.reference)
    ref = vols[ref_name]
    if ref is None:  # "finest" cannot pick a missing series; a named reference is required
        raise ValueError(f"missing series: {ref_name} (the reference series)")
    original = spatial.Grid(ref.shape3d, np.asarray(ref.affine, dtype=np.float64))
    ornt = spatial.ras_orientation(original.affine)
    ras = spatial.reorient_grid(original, ornt)
    target, scale, offset = spatial.spacing_grid(ras, config.target_spacing)

    affines = {m: np.asarray(vols[m].affine, dtype=np.float64) for m in present}  # type: ignore[union-attr]
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    stripped = bx.is_skull_stripped(np.asarray(ref.data), ref.spacing)
    extra: dict[str, Any] = {
        "series": {m: _series_name(m, vols[m]) for m in present},  # type: ignore[arg-type]
        "missing": [m for m in MODALITIES if m not in present],
        "skull_stripped_input": stripped,
        "warnings": warnings,
        "seconds": seconds,
    }
    if extra["missing"]:
        warnings.append(f"missing series {', '.join(extra['missing'])}: zero channel(s)")

    # Co-registration (by headers, then for rigid/auto a rigid correction folded into the
    # affine, so that each series is still interpolated only once) runs in a worker thread
    # while brain extraction runs here: SimpleITK and PyTorch release the GIL, so on 2 cores
    # the two overlap (TCGA-FG-6692: see benchmarks/results/clinical_pipeline.md).
    run_bet = config.brain_extraction == "on" or (
        config.brain_extraction == "auto" and not stripped
    )
    with ThreadPoolExecutor(1, thread_name_prefix="transmed-coreg") as pool:
        pending = pool.submit(_timed, _coregistration, vols, present, ref_name, ras, config,
                              stripped, series_info or {})  # fmt: skip
        # Brain extraction on the reference series' own grid (its affine is never corrected).
        t0 = time.perf_counter()
        brain = bx.brain_mask(ref.data, ref.affine, device=device) if run_bet else None
        seconds["brain_extraction"] = time.perf_counter() - t0
        results, seconds["coregistration"] = pending.result()
    extra["coregistration"] = {"mode": config.coregistration, **results.pop("_decision")}
    for m, why in extra["coregistration"].get("dropped", {}).items():
        # only with missing_modalities="zero" (otherwise the RegistrationError propagates)
        vols[m] = None
        present.remove(m)
        extra["missing"].append(m)
        warnings.append(f"{why}: left out, predicted without it (zero channel)")
    extra["registration"] = {m: r.summary() for m, r in results.items()}
    if config.coregistration == "rigid":  # kept for readers of earlier records
        extra["rigid_world_transforms"] = {m: r.matrix.tolist() for m, r in results.items()}
    affines.update({m: np.linalg.inv(r.matrix) @ affines[m] for m, r in results.items()})

    if brain is not None:
        info = brain.summary()
        info["series"] = ref_name
        extra["brain_extraction"] = {"mode": config.brain_extraction, "applied": True, **info}
        if brain.problems:
            message = (
                f"brain mask of the {_series_name(ref_name, ref)} series is implausible: "
                f"{'; '.join(brain.problems)}"
            )
            if not force:
                raise bx.BrainMaskError(message + " (use --force to predict anyway)")
            warnings.append(message + " (--force)")
            extra["forced"] = True
    else:
        reason = "off" if config.brain_extraction == "off" else "input already skull-stripped"
        extra["brain_extraction"] = {
            "mode": config.brain_extraction, "applied": False, "reason": reason,
        }  # fmt: skip

    # One interpolation per modality, straight from its own voxels. Kept as four arrays, not
    # stacked: only the cropped region is ever copied again (preprocessing is memory-bound).
    t0 = time.perf_counter()
    channels: list[np.ndarray | None] = [
        np.asarray(spatial.resample_to_grid(vols[m].data, affines[m], target, order=1),  # type: ignore[union-attr]
                   dtype=np.float32) if m in present else None
        for m in MODALITIES
    ]  # fmt: skip
    used = [c for c in channels if c is not None]

    if brain is not None:
        method = "brain"
        mask = spatial.resample_to_grid(
            brain.mask.astype(np.float32), ref.affine, target, order=1
        ) > 0.5  # fmt: skip
    else:
        method = fg.choose_method(np.asarray(ref.data), config.foreground)
        mask = fg.foreground_mask(used, method)
    if not mask.any():
        raise ValueError(f"case {case_id or ''}: no foreground found (all-zero images?)")
    margin = tuple(int(math.ceil(config.margin_mm / s - 1e-9)) for s in target.spacing)
    box = fg.bounding_box(mask, margin)  # type: ignore[arg-type]
    crop = tuple(slice(a, b) for a, b in box)
    mask = mask[crop]

    image = np.zeros((len(channels), *mask.shape), dtype=np.float32)  # (4, D, H, W)
    outside = ~mask
    means, stds = [], []
    fields: dict[str, Any] = {}
    for name, channel, out in zip(MODALITIES, channels, image, strict=True):
        if channel is None:  # missing series: zeros, the z-scored mean
            means.append(0.0)
            stds.append(0.0)
            continue
        part = channel[crop]
        if config.bias_correction == "n4":
            t1 = time.perf_counter()
            part, fields[name] = bias_field.n4_correct(part, mask, target.spacing)
            seconds["bias_correction"] = seconds.get("bias_correction", 0.0) + (
                time.perf_counter() - t1)
        mean, std = _zscore(part, mask, out, outside)
        means.append(mean)
        stds.append(std)
    del channels, used
    seconds["resample_normalise"] = time.perf_counter() - t0 - seconds.get("bias_correction", 0.0)
    if config.bias_correction == "n4":  # "n4_two_pass": the predictor's, after a first pass
        extra["bias_correction"] = {"mode": config.bias_correction, "field_range": fields}
    extra["input_profile"] = _input_profile(vols, ref_name, mask, target, means, stds)
    warnings.extend(input_warnings(extra["input_profile"], brain is not None))

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
    seconds["total"] = time.perf_counter() - t_start
    return PreprocessedCase(image=image, label=out_label, record=record, mask=mask)


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0


def _coregistration(
    vols: Mapping[str, Volume | None],
    present: list[str],
    ref_name: str,
    ras: spatial.Grid,
    config: PreprocessConfig,
    stripped: bool,
    series_info: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Registration results (reference -> series) of the series that need one, by
    ``config.coregistration``; key ``"_decision"`` says what was decided and why."""
    others = [m for m in present if m != ref_name]
    if config.coregistration == "header" or not others:
        return {"_decision": {"decision": "header", "reason": "configured" if others else
                              "single series"}}  # fmt: skip
    frames = {m: (series_info.get(m) or {}).get("frame_of_reference_uid") for m in present}
    other_frame = [m for m in others if frames[m] and frames[ref_name]
                   and frames[m] != frames[ref_name]]  # fmt: skip
    if config.coregistration == "auto" and not other_frame:
        grids = {(vols[m].shape3d, np.round(np.asarray(vols[m].affine), 4).tobytes())  # type: ignore[union-attr]
                 for m in present}  # fmt: skip
        if stripped and len(grids) == 1:
            return {"_decision": {"decision": "header", "reason": (
                "skull-stripped series on one grid: co-registered already")}}  # fmt: skip
    from transmed.transforms.registration import coregister

    ref = vols[ref_name]
    grid, _, _ = spatial.spacing_grid(ras, (REGISTRATION_SPACING,) * 3)
    fixed = spatial.resample_to_grid(ref.data, ref.affine, grid, order=1)  # type: ignore[union-attr]
    method = fg.choose_method(np.asarray(ref.data), config.foreground)  # type: ignore[union-attr]
    mask = fg.foreground_mask(fixed[None], method)
    from transmed.transforms.registration import RegistrationError

    def one(m: str) -> Any:  # one thread per series: ITK runs single-threaded (repeatable)
        moving = spatial.resample_to_grid(vols[m].data, vols[m].affine, grid, order=1)  # type: ignore[union-attr]
        forced = config.coregistration == "rigid" or m in other_frame
        try:
            return coregister(fixed, moving, grid.affine, fixed_mask=mask, force=forced,
                              name=_series_name(m, vols[m]))  # type: ignore[arg-type]  # fmt: skip
        except RegistrationError as exc:
            if config.missing_modalities != "zero":
                raise
            return exc  # a model trained with missing series: predict without this one

    with ThreadPoolExecutor(REGISTRATION_WORKERS, thread_name_prefix="transmed-reg") as pool:
        done = dict(zip(others, pool.map(one, others), strict=True))
    out: dict[str, Any] = {}
    dropped = {m: str(r) for m, r in done.items() if isinstance(r, RegistrationError)}
    done = {m: r for m, r in done.items() if m not in dropped}
    for m, result in done.items():
        if m in other_frame:
            result.reason = "another FrameOfReferenceUID than the reference series"
        if result.method == "rigid":
            out[m] = result
        else:
            out.setdefault("_kept", {})[m] = result
    kept = out.pop("_kept", {})
    decision = {
        "decision": "rigid" if out else "header",
        "registered": sorted(out), "headers_kept": sorted(kept),
        "other_frame_of_reference": sorted(other_frame),
        "grid_spacing_mm": REGISTRATION_SPACING,
        "checks": {m: r.summary() for m, r in kept.items()},
        "dropped": dropped,  # series that could not be registered, left out (missing: zero)
    }  # fmt: skip
    return {**out, "_decision": decision}


def _input_profile(
    vols: Mapping[str, Volume | None], ref_name: str, mask: np.ndarray, target: spatial.Grid,
    means: Sequence[float], stds: Sequence[float],
) -> dict[str, Any]:  # fmt: skip
    """What the input looked like (compared with a model's training data by the predictor)."""
    ref = vols[ref_name]
    data = np.asarray(ref.data)  # type: ignore[union-attr]
    return {
        "reference_spacing_mm": [round(s, 3) for s in ref.spacing],  # type: ignore[union-attr]
        "max_slice_mm": round(max(ref.spacing), 3),  # type: ignore[union-attr]
        "foreground_ml": round(float(mask.sum()) * float(np.prod(target.spacing)) / 1000.0, 1),
        "reference_min": float(data.min()),
        "reference_max": float(data.max()),
        "intensity_mean": [round(float(m), 4) for m in means],
        "intensity_std": [round(float(s), 4) for s in stds],
    }


#: Plausible foreground volumes (ml): a brain, or a head with some neck.
PLAUSIBLE_BRAIN_ML = (600.0, 2200.0)
PLAUSIBLE_HEAD_ML = (600.0, 8000.0)


def input_warnings(profile: Mapping[str, Any], brain: bool) -> list[str]:
    """Warnings for an input that is probably not a brain MR examination (a CT, an empty or
    nearly empty volume, a field of view too small or too large for a head)."""
    out = []
    lo, hi = PLAUSIBLE_BRAIN_ML if brain else PLAUSIBLE_HEAD_ML
    ml = float(profile["foreground_ml"])
    what = "brain" if brain else "foreground"
    if not lo <= ml <= hi:
        out.append(f"{what} volume {ml:.0f} ml is outside {lo:.0f}-{hi:.0f} ml: not a whole "
                   "brain MR examination?")  # fmt: skip
    if float(profile["reference_min"]) < -500:
        out.append(f"reference series has values down to {profile['reference_min']:.0f}: "
                   "Hounsfield units (a CT), not MR?")  # fmt: skip
    if not any(s > 0 for s in profile["intensity_std"]):
        out.append("no intensity variation inside the foreground: an empty volume?")
    return out


def data_profile(records: Sequence[PreprocessRecord | Mapping[str, Any]]) -> dict[str, Any]:
    """What a model's training data looked like, from their preprocessing records; stored in a
    checkpoint as ``data_profile`` so that ``predict`` can warn about inputs far from it
    (:func:`transmed.inference.provenance.profile_warnings`).

    Returns ``{"cases", "skull_stripped_fraction", "max_slice_mm", "spacing_mm" [min, max],
    "foreground_ml" [5th, 95th percentile]}``.
    """
    recs = [r if isinstance(r, PreprocessRecord) else PreprocessRecord.from_dict(r)
            for r in records]  # fmt: skip
    if not recs:
        raise ValueError("data_profile needs at least one preprocessing record")
    stripped, slices, spacings, volumes = [], [], [], []
    for r in recs:
        stripped.append(r.foreground in ("nonzero", "brain"))
        original = np.linalg.norm(np.asarray(r.original_affine)[:3, :3], axis=0)
        slices.append(float(original.max()))
        spacings.extend(float(s) for s in r.spacing)
        ml = (r.extra.get("input_profile") or {}).get("foreground_ml")
        if ml is not None:  # records written before the profile existed have none
            volumes.append(float(ml))
    out: dict[str, Any] = {
        "cases": len(recs),
        "skull_stripped_fraction": round(float(np.mean(stripped)), 4),
        "max_slice_mm": round(max(slices), 3),
        "spacing_mm": [round(min(spacings), 3), round(max(spacings), 3)],
    }
    if volumes:
        out["foreground_ml"] = [round(float(np.percentile(volumes, 5)), 1),
                                round(float(np.percentile(volumes, 95)), 1)]  # fmt: skip
    return out


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
