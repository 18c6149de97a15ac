"""A mutation fuzzer for the DICOM reader and the node's C-STORE check (issue 15).

Seeds are real instances (pydicom-data's small MR files, plain, implicit VR, big endian and
RLE, and its enhanced MR given functional groups) and a synthetic single-series study. Each
case takes one instance of one seed and mutates its bytes: truncation, byte flips, broken VRs,
lengths beyond the file, spliced chunks, deeply nested sequences, or a hostile value written
raw into one attribute. The mutated file then goes through

- the reader: :func:`~transmed.io.dicom.scan_folder`, every series built and its pixels read,
  and :func:`~transmed.io.dicom.load_study` with its volumes; only
  :class:`~transmed.io.dicom.DicomError` may come out;
- the node: :func:`transmed.service.validation.parse_instance`; only
  :class:`~transmed.service.validation.InstanceRefused` may come out.

Any other exception is a defect and is reported with the seed, the mutation and where it was
raised. Cases are drawn from one ``random.Random(seed)``, so a run is reproducible.
"""

from __future__ import annotations

import io
import logging
import random
import re
import shutil
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid

#: pydicom-data's small MR instances used as seeds (64 × 64; one of each encoding).
REAL_SOURCES = ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm")


@dataclass
class Seed:
    """A folder of instances that reads cleanly, and the one file each case mutates."""

    name: str
    folder: Path
    target: Path
    original: bytes
    sop_class: str
    sop_instance: str


@dataclass
class Defect:
    seed: str
    mutation: str
    target: str  # "reader" or "node"
    error: str  # exception type and message
    where: str  # the innermost frame in transmed, or the last frame


@dataclass
class FuzzReport:
    cases: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # "reader:DicomError" ...
    mutations: Counter = field(default_factory=Counter)
    defects: list[Defect] = field(default_factory=list)

    def unique_defects(self) -> list[Defect]:
        seen: dict[tuple[str, str, str], Defect] = {}
        for d in self.defects:
            seen.setdefault((d.target, d.error.split(":")[0], d.where), d)
        return list(seen.values())


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------


def _real_series(folder: Path, source: str, n: int = 3) -> list[Path]:
    """``n`` slices of one real pydicom-data MR file, stacked along its normal."""
    from pydicom.data import get_testdata_file

    base = pydicom.dcmread(get_testdata_file(source))
    iop = np.asarray(base.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    # UIDs from fixed entropy: the same seed bytes, so the same mutations, on every run
    series_uid, paths = generate_uid(entropy_srcs=[source, "series"]), []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file(source))
        ds.SeriesInstanceUID = series_uid
        uid = generate_uid(entropy_srcs=[source, str(k)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesDescription = "T1 AX"  # matched by the default rules: load_study reads it
        xyz = np.asarray(base.ImagePositionPatient, dtype=float) + 2.5 * k * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in xyz]
        path = folder / f"IM{k}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _enhanced(folder: Path) -> Path:
    """pydicom-data's enhanced MR (10 frames of 64 × 64) with the functional groups it lacks."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    orientation, measures, shared = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.9, 0.8], 1.5
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for f in range(int(ds.NumberOfFrames)):
        position, item = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 1.5 * f]
        item.PlanePositionSequence = DicomSequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.SeriesDescription = "T1 3D"
    path = folder / "enhanced.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _seed(name: str, folder: Path, target: Path) -> Seed:
    ds = pydicom.dcmread(target, stop_before_pixels=True)
    return Seed(name, folder, target, target.read_bytes(), str(ds.SOPClassUID),
                str(ds.SOPInstanceUID))  # fmt: skip


def make_seeds(root: Path, *, synthetic: bool = True) -> list[Seed]:
    """Write every seed under ``root``; each seed's folder reads without error."""
    seeds = []
    for source in REAL_SOURCES:
        folder = root / source.removesuffix(".dcm")
        paths = _real_series(folder, source)
        seeds.append(_seed(source, folder, paths[1]))
    seeds.append(_seed("emri_small.dcm+groups", root / "enhanced", _enhanced(root / "enhanced")))
    if synthetic:
        from transmed.data.synth.dicom import write_dicom_study

        study = write_dicom_study(root / "synthetic", shape=(16, 16, 16), modalities=("t1",))
        files = sorted(study.files["t1"])
        seeds.append(_seed("synthetic t1", root / "synthetic", files[len(files) // 2]))
    return seeds


# --------------------------------------------------------------------------------------------
# mutations: bytes in, bytes out
# --------------------------------------------------------------------------------------------

_VRS = [b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
        b"OD", b"OF", b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI",
        b"UL", b"UN", b"US", b"UT", b"UC", b"UR", b"OV", b"SV", b"UV"]  # fmt: skip
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OV",
             b"SV", b"UV"}  # fmt: skip
_ELEMENT = re.compile(rb"(?s)(?=(.)(.)(.)(.)(" + b"|".join(_VRS) + rb"))")


def _header_end(raw: bytes) -> int:
    """Offset of the pixel data element (or the end): mutations aim at the header."""
    for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        at = raw.rfind(tag)
        if at > 0:
            return at
    return len(raw)


def _elements(raw: bytes) -> list[tuple[int, bytes]]:
    """(offset, VR) of what looks like explicit-VR elements in the header (a heuristic)."""
    end = _header_end(raw)
    return [
        (m.start(), raw[m.start() + 4 : m.start() + 6]) for m in _ELEMENT.finditer(raw, 132, end)
    ]


def truncate(raw: bytes, rng: random.Random) -> bytes:
    end = _header_end(raw) + 16 if rng.random() < 0.6 else len(raw)
    return raw[: rng.randrange(0, min(end, len(raw)))]


def flip_bytes(raw: bytes, rng: random.Random) -> bytes:
    out = bytearray(raw)
    end = _header_end(raw)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(128, max(129, end))
        out[at] = rng.randrange(256) if rng.random() < 0.5 else out[at] ^ (1 << rng.randrange(8))
    return bytes(out)


def break_vr(raw: bytes, rng: random.Random) -> bytes:
    found = _elements(raw)
    if not found:
        return flip_bytes(raw, rng)
    out = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        at, _vr = rng.choice(found)
        new = rng.choice([*_VRS, b"\x00\x00", b"ZZ", b"sq", b"  "])
        out[at + 4 : at + 6] = new
    return bytes(out)


def length_beyond_file(raw: bytes, rng: random.Random) -> bytes:
    found = _elements(raw)
    if not found:
        return truncate(raw, rng)
    out = bytearray(raw)
    at, vr = rng.choice(found)
    # the file meta group (0002) is always little endian; the data set may be big endian
    little = raw.rfind(b"\x7f\xe0\x00\x10") < 0 or raw[at : at + 2] == b"\x02\x00"
    order = "little" if little else "big"
    if vr in _LONG_VRS:
        value = rng.choice([len(raw) * 2, 0xFFFFFFFE, 0x7FFFFFFF, 0xFFFFFFFF, len(raw) - at])
        out[at + 8 : at + 12] = value.to_bytes(4, order)
    else:
        value = rng.choice([0xFFFF, 0xFFFE, len(raw) % 0xFFFF | 1])
        out[at + 6 : at + 8] = value.to_bytes(2, order)
    return bytes(out)


def splice(raw: bytes, rng: random.Random) -> bytes:
    end = max(133, _header_end(raw))
    a = rng.randrange(132, end)
    b = min(len(raw), a + rng.randint(1, 256))
    at = rng.randrange(132, end)
    chunk = raw[a:b] * rng.randint(1, 4)
    return raw[:at] + chunk + raw[at:]


def _nested(depth: int, closed: bool, little: bool) -> bytes:
    def tag(group: int, elem: int) -> bytes:
        order = "little" if little else "big"
        return group.to_bytes(2, order) + elem.to_bytes(2, order)

    undefined = b"\xff\xff\xff\xff"
    open_level = tag(0x0009, 0x1010) + b"SQ\x00\x00" + undefined + tag(0xFFFE, 0xE000) + undefined
    close_level = tag(0xFFFE, 0xE00D) + b"\x00" * 4 + tag(0xFFFE, 0xE0DD) + b"\x00" * 4
    return open_level * depth + (close_level * depth if closed else b"")


def nest_sequences(raw: bytes, rng: random.Random) -> bytes:
    """A private sequence nested 2 to 20,000 levels deep, closed or not, before the pixels."""
    depth = rng.choice([2, 8, 9, 17, 64, 400, 5000, 20000])
    little = raw.rfind(b"\x7f\xe0\x00\x10") < 0
    at = _header_end(raw)
    return raw[:at] + _nested(depth, rng.random() < 0.7, little) + raw[at:]


#: Attributes the reader and the node interpret, and hostile raw values for them.
_ATTRIBUTES = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
               "PixelRepresentation", "SamplesPerPixel", "NumberOfFrames", "PixelSpacing",
               "SliceThickness", "ImagePositionPatient", "ImageOrientationPatient",
               "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation", "SeriesNumber",
               "InstanceNumber", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
               "StudyInstanceUID", "ImageType", "SeriesDescription", "ProtocolName",
               "SpacingBetweenSlices", "PlanarConfiguration", "FrameOfReferenceUID",
               "ContrastBolusAgent", "ScanningSequence", "PixelData"]  # fmt: skip
_VALUES = [
    b"",
    b"0",
    b"-1",
    b"65535",
    b"4294967296",
    b"abc",
    b"nan",
    b"inf",
    b"-inf",
    b"1e400",
    b"1\\2",
    b"1\\2\\3\\4\\5\\6\\7",
    b"0\\0\\0\\0\\0\\0",
    b"1\\0\\0\\1\\0\\0",
    b"\x00\x00",
    b"\xff\xff\xff\xff",
    b"A" * 70,
    b"1.2.3.",
    b"../../etc",
    b"MONOCHROME3",
    b"RGB",
    b"1.2.840.10008.1.2.4.90",
    b"\x00" * 8,
    b"1e-300\\1e-300",
    b"9" * 40,
]


def hostile_value(raw: bytes, rng: random.Random) -> bytes:
    """One attribute rewritten raw (pydicom's writer would refuse most of these values)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    except Exception:  # a seed always parses; keep the fuzzer total anyway
        return flip_bytes(raw, rng)
    keyword = rng.choice(_ATTRIBUTES)
    tag = Tag(keyword)
    if rng.random() < 0.15:
        if tag in ds:
            del ds[tag]
    else:
        from pydicom.datadict import dictionary_VR

        value = rng.choice(_VALUES)
        value = value + (b" " if len(value) % 2 else b"")
        vr = dictionary_VR(tag) if rng.random() < 0.8 else rng.choice(_VRS).decode()
        vr = vr.split(" or ")[0]
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, ds.is_implicit_VR,
                                 ds.is_little_endian)  # fmt: skip
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=False)
    except Exception:  # the writer itself refused: fall back to a byte-level mutation
        return flip_bytes(raw, rng)
    return buffer.getvalue()


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    "break_vr": break_vr,
    "length_beyond_file": length_beyond_file,
    "splice": splice,
    "nest_sequences": nest_sequences,
    "hostile_value": hostile_value,
}


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------


def read_with_reader(folder: Path) -> None:
    """Everything the reader does with a folder: scan, build and read every series, and
    load the study (rules, choice of series) with its volumes."""
    from transmed.io.dicom import DicomError, load_study, scan_folder

    scan = scan_folder(folder)
    for uid in sorted(scan.series):
        try:
            scan.build(uid).volume(max_voxels=2**22)
        except DicomError:
            pass  # a refused series; the study load below must refuse it the same way
    load_study(folder, modalities=(), max_voxels=2**22).volumes()


def check_with_node(raw: bytes, seed: Seed) -> None:
    from transmed.service.config import LimitsConfig
    from transmed.service.validation import parse_instance

    parse_instance(raw, context_sop_class=seed.sop_class, request_sop_instance=seed.sop_instance,
                   limits=LimitsConfig(max_voxels=2**22))  # fmt: skip


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/transmed/" in f.filename and "/bench/" not in f.filename]
    frame = (ours or frames)[-1] if frames else None
    if frame is None:
        return "?"
    return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom warns on every malformed value; the fuzzer only wants the exceptions."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def fuzz(
    seeds: list[Seed],
    *,
    cases: int,
    seed: int = 0,
    time_limit_s: float | None = None,
    mutations: dict[str, Callable[[bytes, random.Random], bytes]] = MUTATIONS,
    on_case: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Run ``cases`` mutated instances through the reader and the node; report defects.

    Each case rewrites its seed's target file in place and restores it afterwards.
    """
    from transmed.io.dicom import DicomError
    from transmed.service.validation import InstanceRefused

    rng = random.Random(seed)
    report = FuzzReport()
    start = time.perf_counter()
    names = sorted(mutations)
    with _quiet():
        for n in range(cases):
            if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
                break
            chosen = rng.choice(seeds)
            name = rng.choice(names)
            mutated = mutations[name](chosen.original, random.Random(rng.getrandbits(64)))
            report.mutations[name] += 1
            t0 = time.perf_counter()
            checks: list[tuple[str, Callable[[], Any], type[BaseException]]] = [
                ("reader", lambda s=chosen: read_with_reader(s.folder), DicomError),
                ("node", lambda s=chosen, m=mutated: check_with_node(m, s), InstanceRefused),
            ]
            chosen.target.write_bytes(mutated)
            try:
                for target, call, allowed in checks:
                    try:
                        call()
                        report.outcomes[f"{target}:accepted"] += 1
                    except allowed:
                        report.outcomes[f"{target}:{allowed.__name__}"] += 1
                    except Exception as exc:  # noqa: BLE001 (that is the point)
                        report.outcomes[f"{target}:DEFECT"] += 1
                        report.defects.append(Defect(
                            chosen.name, name, target,
                            f"{type(exc).__name__}: {str(exc)[:200]}", _where(exc),
                        ))  # fmt: skip
            finally:
                chosen.target.write_bytes(chosen.original)
            report.slowest_s = max(report.slowest_s, time.perf_counter() - t0)
            report.cases = n + 1
            if on_case is not None:
                on_case(n)
    report.seconds = time.perf_counter() - start
    return report


def fuzz_in_tempdir(cases: int, seed: int = 0, *, synthetic: bool = True,
                    time_limit_s: float | None = None) -> FuzzReport:  # fmt: skip
    """Seeds written to a fresh temporary folder, fuzzed, and removed."""
    root = Path(tempfile.mkdtemp(prefix="transmed-fuzz-"))
    try:
        seeds = make_seeds(root, synthetic=synthetic)
        return fuzz(seeds, cases=cases, seed=seed, time_limit_s=time_limit_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
