"""One case, loaded when it is opened: every volume on the prediction's grid, RAS voxel order.

NiiVue draws into a bitmap laid out like its background volume after *its* reorientation to
RAS. Serving every volume already in the closest-RAS voxel order (exact axis flips and
permutations, :mod:`transmed.transforms.spatial`) on one grid, the prediction's, makes that
bitmap exactly the label map in RAS order: voxel ``(x, y, z)`` of the drawing is byte
``x + X·(y + Y·z)``, and :meth:`LoadedCase.from_ras_bitmap` takes it back to the file's own voxel
order with the inverse flips. Modalities on another grid (native clinical series) are resampled
onto the prediction's grid (trilinear) for display only.

A label map on another grid than the T1ce, or one that cannot be read, is refused with a
:class:`~transmed.viewer.sources.ViewerError` the page shows; it is never shown misaligned.

A case whose correction was saved (``<stem>_corrected.nii.gz``, :mod:`transmed.viewer.saving`)
opens with that correction, checked like the prediction (same grid, readable, values of the
prediction's label convention); one that fails is reported, never replaced by the prediction.
The prediction's labels stay in memory too (:attr:`LoadedCase.original`): each save records its
change since the last save and since the prediction.

What the page downloads is encoded once per case and kept with it (:meth:`LoadedCase.encoded`,
dropped with the case from the server's LRU): images as uncompressed NIfTI (gzip cost the server
~1 s and the page more per volume on loopback), 16-bit with a scale slope for float data, and
with ``cal_min``/``cal_max`` set to the display range, so NiiVue skips its own histogram; the
label bitmap also gzip-compressed, for browsers that accept it (~100-fold smaller, ~0.05 s).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation

from transmed.data.labels import CLASS_NAMES, REGIONS, LabelConvention
from transmed.io.hashing import file_sha256
from transmed.io.nifti import DEFAULT_MAX_VOXELS, Volume, check_nifti_header, load_volume
from transmed.transforms import spatial
from transmed.viewer.sources import ViewCase, ViewerError, record_path_of

#: Largest distance (mm) between two affines' entries that still counts as the same grid.
GRID_ATOL_MM = 1e-3
#: Display window: these percentiles of the non-zero voxels (NiiVue's own default is 2-98 %).
WINDOW_PERCENTILES = (2.0, 98.0)
#: Voxels sampled (at most) to find the display window.
WINDOW_SAMPLE = 1_000_000


@dataclass(frozen=True)
class Encoded:
    """Bytes the page downloads, with their entity tag (a hash of the bytes)."""

    data: bytes
    etag: str


#: Keys of :meth:`LoadedCase.encoded` built from the labels (dropped when the labels change).
LABEL_KEYS = ("labels.raw", "labels.raw.gz")


@dataclass
class LoadedCase:
    """A case in memory: its reference grid and its labels (internal 0-3, file voxel order).

    ``internal`` and ``file_values`` are the labels shown: the latest saved correction when
    there is one, else the prediction; ``original`` is the prediction's (for the record).
    """

    case: ViewCase
    grid: spatial.Grid  # the prediction's grid (the T1ce's)
    internal: np.ndarray  # (X, Y, Z) uint8, internal labels, file voxel order
    file_values: np.ndarray | None  # (X, Y, Z) the shown label file's own values (NIfTI)
    convention: LabelConvention
    dicom: Any = None  # (DicomStudy, reference DicomSeries) for a DICOM case
    original: np.ndarray | None = None  # the prediction's internal labels (None: ``internal``)
    #: what ``internal`` holds: ``shown`` prediction | correction | empty (nothing predicted),
    #: ``file`` its name, ``saved_at`` (a correction) when it was saved (UTC, ISO 8601),
    #: ``recorded`` False when the edit record does not describe that file (its mtime then)
    labels_from: dict[str, Any] = field(default_factory=dict)
    _volumes: dict[str, Any] = field(default_factory=dict)  # DICOM: modality -> Volume
    _encoded: dict[str, Encoded] = field(default_factory=dict)  # key -> bytes served
    _encode_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.original is None:
            self.original = self.internal  # replaced, never written into, when labels change

    def set_labels(
        self, internal: np.ndarray, file_values: np.ndarray | None, labels_from: dict[str, Any]
    ) -> None:
        """Show ``internal`` from now on (a save's labels); the encodings of the old ones go."""
        if internal.shape != self.internal.shape:
            raise ViewerError(f"labels {internal.shape} != case grid {self.internal.shape}")
        with self._encode_lock:
            self.internal = np.ascontiguousarray(internal, dtype=np.uint8)
            self.file_values = file_values
            self.labels_from = dict(labels_from)
            for key in LABEL_KEYS:
                self._encoded.pop(key, None)

    def encoded(self, key: str, build: Callable[[], bytes]) -> Encoded:
        """``build()`` once per key (an image modality, the labels), then from memory.

        One lock per case: a second request for the case waits for the first encoding instead
        of repeating it (the page asks for the image and the labels at once).
        """
        with self._encode_lock:
            if key not in self._encoded:
                data = build()
                tag = hashlib.blake2b(data, digest_size=12).hexdigest()
                self._encoded[key] = Encoded(data, f'"{tag}"')
            return self._encoded[key]

    @property
    def to_ras(self) -> np.ndarray:
        return spatial.ras_orientation(self.grid.affine)

    @property
    def ras_grid(self) -> spatial.Grid:
        return spatial.reorient_grid(self.grid, self.to_ras)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.grid.affine[:3, :3]))) / 1000.0

    def label_voxels(self, internal: np.ndarray | None = None) -> list[int]:
        """Voxels of each internal label 0-3 (the page's volume table starts from these)."""
        lab = self.internal if internal is None else internal
        n = [int(np.count_nonzero(lab == c)) for c in (1, 2, 3)]  # no int64 copy of the map
        return [int(lab.size) - sum(n), *n]

    def volumes_ml(
        self, internal: np.ndarray | None = None, *, counts: list[int] | None = None
    ) -> dict[str, float]:
        """Volume (ml) of WT, TC, ET and of each label (one count of the label map, or
        ``counts`` from :meth:`label_voxels`: the nested regions are sums of labels,
        WT = 1+2+3, TC = 1+3, ET = 3)."""
        n = self.label_voxels(internal) if counts is None else counts
        voxels = dict(zip(REGIONS, (n[1] + n[2] + n[3], n[1] + n[3], n[3]), strict=True))
        voxels.update({CLASS_NAMES[c]: n[c] for c in (1, 2, 3)})
        return {k: round(float(v) * self.voxel_ml, 3) for k, v in voxels.items()}

    def from_ras_bitmap(self, data: bytes) -> np.ndarray:
        """NiiVue's drawing bitmap (RAS order, x fastest) → internal labels in file order.

        Raises:
            ViewerError: wrong length or a value outside 0-3.
        """
        ras = self.ras_grid
        n = int(np.prod(ras.shape))
        if len(data) != n:
            raise ViewerError(f"drawing has {len(data)} voxels, the case grid {ras.shape} has {n}")
        arr = np.frombuffer(data, dtype=np.uint8).reshape(ras.shape, order="F")
        if arr.max(initial=0) > 3:
            raise ViewerError(f"drawing holds label {int(arr.max())}; expected 0-3")
        return spatial.reorient(arr, spatial.inverse_orientation(self.to_ras))

    def ras(self, data: np.ndarray) -> np.ndarray:
        return spatial.reorient(data, self.to_ras)

    def ras_fortran(self, data: np.ndarray) -> np.ndarray:
        """:meth:`ras` laid out x fastest (NIfTI's and NiiVue's order): one copy, not two."""
        return np.asfortranarray(apply_orientation(data, self.to_ras))

    def image(self, modality: str) -> np.ndarray:
        """The modality's intensities on the reference grid, file voxel order (float32 or the
        file's integer type)."""
        case = self.case
        if self.dicom is not None:
            vols = self._volumes or self.dicom[0].volumes()
            self._volumes = vols
            if modality not in vols:
                raise ViewerError(f"the study has no {modality} series")
            vol = vols[modality]
            data, affine = vol.data, vol.affine
        else:
            if modality not in case.images:
                raise ViewerError(f"case {case.case_id} has no {modality} image")
            path = case.images[modality]
            if modality in case.channels:
                img = check_nifti_header(path, allow_4d=True)
                data = np.asarray(img.dataobj[..., case.channels[modality]])
                affine = img.affine
            else:
                img = check_nifti_header(path)
                try:
                    data = np.asanyarray(img.dataobj)
                except Exception as exc:
                    raise ViewerError(f"{path.name}: voxel data unreadable ({exc})") from None
                data = data.reshape(data.shape[:3])
                affine = img.affine
        if data.shape[:3] == self.grid.shape and np.allclose(
            affine, self.grid.affine, atol=GRID_ATOL_MM
        ):
            return data
        return spatial.resample_to_grid(data, affine, self.grid, order=1)


def _values_present(values: np.ndarray) -> set[int]:
    """The distinct values of an integer label map; a few comparisons for label-like ranges
    instead of a sort of every voxel (np.unique took ~1 s for a 240 × 240 × 155 map)."""
    if values.size == 0:
        return set()
    lo, hi = int(values.min()), int(values.max())
    if hi - lo < 16:
        return {v for v in range(lo, hi + 1) if v in (lo, hi) or bool((values == v).any())}
    return {int(v) for v in np.unique(values)}


def _same_grid(shape: tuple[int, ...], affine: np.ndarray, grid: spatial.Grid) -> bool:
    return tuple(shape[:3]) == tuple(grid.shape) and np.allclose(
        affine, grid.affine, atol=GRID_ATOL_MM
    )


def _read_label_file(path: Path, grid: spatial.Grid, max_voxels: int, what: str, against: str,
                     hint: str = "") -> Volume:  # fmt: skip
    """The label map ``path`` (int32 values), read with the voxel cap and checked to lie on
    ``grid``; ``what`` names it and ``against`` the grid's owner in the errors, which end with
    ``hint``.

    Raises:
        ViewerError: unreadable, or on another grid (never shown misaligned).
    """
    try:
        vol = load_volume(path, max_voxels=max_voxels, dtype=np.int32)
    except (ValueError, OSError) as exc:
        raise ViewerError(f"{what}: {exc}{hint}") from None
    if not _same_grid(vol.shape3d, vol.affine, grid):
        raise ViewerError(
            f"{what} is on another grid ({vol.shape3d}, spacing "
            f"{tuple(round(s, 3) for s in vol.spacing)} mm) than {against} ({grid.shape}); "
            f"refusing to show it misaligned{hint}"
        )
    return vol


def _load_nifti(case: ViewCase, max_voxels: int) -> LoadedCase:
    ref_mod = "t1ce" if "t1ce" in case.images else next(iter(case.images), None)
    if ref_mod is None:
        raise ViewerError(f"case {case.case_id}: no image found")
    ref_img = check_nifti_header(case.images[ref_mod], max_voxels=max_voxels,
                                 allow_4d=ref_mod in case.channels)  # fmt: skip
    ref_grid = spatial.Grid(tuple(int(s) for s in ref_img.shape[:3]), ref_img.affine.copy())  # type: ignore[arg-type]
    if case.prediction is None:  # annotate from scratch on the T1ce's grid
        internal = np.zeros(ref_grid.shape, dtype=np.uint8)
        return LoadedCase(case, ref_grid, internal, internal.copy(), case.label_convention(),
                          labels_from={"shown": "empty", "file": None})  # fmt: skip
    name = case.prediction.name
    vol = _read_label_file(case.prediction, ref_grid, max_voxels, f"label map {name}",
                           f"the {ref_mod} image {case.images[ref_mod].name}")  # fmt: skip
    values = vol.data
    conv = case.label_convention(_values_present(values))
    from transmed.data.labels import to_internal

    try:
        internal = to_internal(values, conv, source=name)
    except ValueError as exc:
        raise ViewerError(str(exc)) from None
    return LoadedCase(case, spatial.Grid(vol.shape3d, vol.affine), internal, values, conv,
                      labels_from={"shown": "prediction", "file": name})  # fmt: skip


def _seg_labels(masks: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Internal labels from SEG segments: WT/TC/ET (nested) or NCR/ED/ET (disjoint)."""
    out = np.zeros(shape, dtype=np.uint8)
    if "WT" in masks:
        out[masks["WT"]] = 2
        out[masks.get("TC", np.zeros(shape, bool))] = 1
    for name, value in (("NCR", 1), ("ED", 2)):
        if name in masks:
            out[masks[name]] = value
    if "ET" in masks:
        out[masks["ET"]] = 3
    return out


def _load_dicom(case: ViewCase, max_voxels: int) -> LoadedCase:
    from transmed.data.labels import CONVENTIONS
    from transmed.io.dicom import DicomError, load_study
    from transmed.viewer.saving import seg_module

    if case.dicom_folder is None:
        raise ViewerError(f"{case.case_id}: not a DICOM case (no study folder)")
    try:
        study = load_study(case.dicom_folder, max_voxels=max_voxels)
    except (DicomError, ValueError, OSError) as exc:
        raise ViewerError(f"study of {case.case_id}: {exc}") from None
    if "t1ce" not in study.series:
        raise ViewerError(f"study of {case.case_id}: no T1ce series (the SEG's reference)")
    series = study.series["t1ce"]
    grid = spatial.Grid(tuple(series.shape), np.asarray(series.affine, dtype=np.float64))  # type: ignore[arg-type]
    if case.seg is None:
        internal = np.zeros(grid.shape, dtype=np.uint8)
        shown = {"shown": "empty", "file": None}
    else:
        try:
            masks = seg_module().read_seg(case.seg, series)
        except (DicomError, ValueError, OSError) as exc:
            raise ViewerError(f"SEG {case.seg.name}: {exc}") from None
        internal = _seg_labels(masks, grid.shape)
        shown = {"shown": "prediction", "file": case.seg.name}
    return LoadedCase(case, grid, internal, None, CONVENTIONS["internal"], dicom=(study, series),
                      labels_from=shown)  # fmt: skip


def recorded_save(corrected: Path) -> dict[str, Any]:
    """When ``corrected`` was saved: ``{"saved_at"}`` from its edit record's last entry when
    that entry describes this file (its name and, when recorded, its SHA-256), else the
    file's mtime with ``"recorded": False`` (a save whose record could not be written, or a
    file put there by hand): the record's time is never shown for another file."""
    record = record_path_of(corrected)
    try:
        saves = json.loads(record.read_text("utf-8")).get("saves") or []
        last = saves[-1] if isinstance(saves, list) and isinstance(saves[-1], dict) else {}
    except (OSError, ValueError, AttributeError, IndexError):
        last = {}
    if last.get("corrected") == corrected.name and isinstance(last.get("saved_at"), str):
        digest = last.get("sha256")  # absent in records written before it was kept
        if digest is None or digest == file_sha256(corrected):
            return {"saved_at": last["saved_at"]}
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(corrected.stat().st_mtime))
    return {"saved_at": mtime, "recorded": False}


def _with_correction(loaded: LoadedCase, corrected: Path, max_voxels: int) -> LoadedCase:
    """``loaded`` (the prediction) showing the saved correction ``corrected`` instead.

    Raises:
        ViewerError: the correction cannot be read, lies on another grid or holds values the
            prediction's convention does not define (never replaced by the prediction: a save
            would write over the reviewer's earlier work).
    """
    from transmed.data.labels import to_internal

    name = corrected.name
    aside = f"; move {name} aside to open the prediction"
    vol = _read_label_file(corrected, loaded.grid, max_voxels, f"saved correction {name}",
                           "the case", aside)  # fmt: skip
    try:
        internal = to_internal(vol.data, loaded.convention, source=name)
    except ValueError as exc:  # "<name>: unexpected label values ..."
        raise ViewerError(f"saved correction {exc}{aside}") from None
    # ``original`` keeps the prediction's labels (set when the case was built)
    loaded.set_labels(internal, vol.data if loaded.file_values is not None else None,
                      {"shown": "correction", "file": name, **recorded_save(corrected),
                       "prediction": loaded.labels_from.get("file")})  # fmt: skip
    return loaded


def load(
    case: ViewCase, *, max_voxels: int = DEFAULT_MAX_VOXELS, corrected: Path | None = None
) -> LoadedCase:
    """Read a case's labels (and, for DICOM, its study headers); images are read per request.
    ``corrected``: where the case's saved correction would be; when that file exists, its
    labels are the ones shown (see :func:`_with_correction`).

    Raises:
        ViewerError: the case has a recorded problem, or its label map (or saved correction)
            is corrupt, holds values its convention does not define, or lies on another grid
            than the T1ce.
    """
    if case.problem:
        raise ViewerError(f"case {case.case_id}: {case.problem}")
    read = _load_dicom if case.kind == "dicom" else _load_nifti
    loaded = read(case, max_voxels)
    if corrected is not None and (corrected.exists() or corrected.is_symlink()):
        return _with_correction(loaded, corrected, max_voxels)
    return loaded


def nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """An uncompressed NIfTI-1 file in memory (no gzip: the page opens faster on loopback)."""
    if data.dtype == np.float64 or data.dtype == np.bool_:
        data = data.astype(np.float32)
    elif data.dtype == np.int64 or data.dtype == np.uint64:
        data = data.astype(np.int32)
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return bytes(img.to_bytes())


def display_window(data: np.ndarray) -> tuple[float, float]:
    """(low, high) intensities of the display: :data:`WINDOW_PERCENTILES` of the non-zero
    voxels of an even sample of at most :data:`WINDOW_SAMPLE` voxels."""
    step = max(1, round((data.size / WINDOW_SAMPLE) ** (1 / 3)))
    sample = data[::step, ::step, ::step] if data.ndim == 3 else data.reshape(-1)[:: step**3]
    sample = sample[sample != 0]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, WINDOW_PERCENTILES))
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def display_nifti(data: np.ndarray, affine: np.ndarray) -> bytes:
    """An image for display as uncompressed NIfTI-1 bytes, with its window in the header.

    Integer images that fit 16 bits keep their type and values. Anything else (float MR, after
    z-scoring) becomes int16 with the header's scale slope and intercept: 65,535 levels over
    the image's range, half the bytes of float32, on a texture type NiiVue supports.
    ``cal_min``/``cal_max`` hold :func:`display_window`, which NiiVue then uses as is.
    Only uint8 and int16 leave here: the page compiles NiiVue's orient shaders for those two
    types alone (``UNUSED_SHADERS`` in ``static/viewer.js``).
    """
    arr = np.asarray(data)
    slope, inter = 1.0, 0.0
    if arr.dtype in (np.uint8, np.int16) or (
        np.issubdtype(arr.dtype, np.integer) and arr.size
        and int(arr.min()) >= -32768 and int(arr.max()) <= 32767
    ):  # fmt: skip
        out = arr if arr.dtype in (np.uint8, np.int16) else arr.astype(np.int16)
    else:
        work = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(work.min()), float(work.max())) if work.size else (0.0, 0.0)
        slope = (hi - lo) / 65534.0 if hi > lo else 1.0
        inter = (hi + lo) / 2.0  # stored -32767..32767 spans lo..hi
        out = np.rint((work - inter) / slope).astype(np.int16)
        arr = work
    window = display_window(arr)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(out.dtype)
    hdr.set_data_shape(out.shape)
    aff = np.asarray(affine, dtype=np.float64)
    hdr.set_qform(aff, code=1)
    hdr.set_sform(aff, code=1)
    hdr.set_xyzt_units("mm")
    hdr.set_slope_inter(slope, inter)
    hdr["cal_min"], hdr["cal_max"] = window
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0" * 4 + np.asarray(out).tobytes(order="F")


def image_nifti(loaded: LoadedCase, modality: str) -> bytes:
    """The modality on the reference grid in RAS voxel order, as NIfTI bytes for display."""
    return display_nifti(loaded.ras_fortran(loaded.image(modality)), loaded.ras_grid.affine)


def labels_nifti(loaded: LoadedCase, internal: np.ndarray | None = None) -> bytes:
    """Internal labels (uint8, 0-3) in RAS voxel order, as NIfTI bytes (NiiVue's drawing)."""
    lab = loaded.internal if internal is None else internal
    return nifti_bytes(loaded.ras(lab.astype(np.uint8)), loaded.ras_grid.affine)


def labels_raw(loaded: LoadedCase) -> bytes:
    """Internal labels (uint8, 0-3) in RAS voxel order, x fastest: NiiVue's drawing bitmap
    byte for byte (the page sets it directly instead of parsing a NIfTI)."""
    return loaded.ras_fortran(loaded.internal.astype(np.uint8, copy=False)).tobytes(order="F")


def labels_raw_gzip(loaded: LoadedCase) -> bytes:
    """:func:`labels_raw`, gzip-compressed (level 1: a 240 × 240 × 155 map of 8.9 MB becomes
    ~90 kB in ~0.05 s; served with ``Content-Encoding: gzip``, so the page gets the same bytes)."""
    return gzip.compress(labels_raw(loaded), compresslevel=1, mtime=0)
