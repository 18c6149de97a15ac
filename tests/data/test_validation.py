"""Bad inputs are refused before allocation, named with their file; bad cases are skipped."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fake_layouts import AFFINE, INTERNAL, SHAPE, image, write_nifti

from transmed.data.layouts import index_dataset, iter_cases, load_case
from transmed.data.validation import (
    HeaderGrid,
    overlap_fraction,
    world_bbox,
)

MakeDataset = Callable[..., tuple[Path, list[str]]]
#: Byte offsets of NIfTI-1 header fields (float32 arrays).
PIXDIM, SROW_Y = 76, 296


def patch_header(path: Path, offset: int, values: list[float]) -> None:
    """Overwrite float32 header fields of a .nii.gz in place (nibabel refuses to write them)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[offset : offset + 4 * len(values)] = np.asarray(values, dtype="<f4").tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))


def _shifted(mm: float) -> np.ndarray:
    affine = AFFINE.copy()
    affine[:3, 3] += mm
    return affine


def _truncate(path: Path) -> None:
    """Keep the header, cut the voxel data short (a half-copied file)."""
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))


def _qform_only_zero_pixdim(path: Path) -> None:
    """A qform-only header with pixdim[3] = 0 (nibabel would read it as 1 mm)."""
    img = nib.Nifti1Image(image("t1"), AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(None, code=0)
    nib.save(img, str(path))
    patch_header(path, PIXDIM + 12, [0.0])


def _nifti2_wrapping_dims(path: Path) -> None:
    """A NIfTI-2 header claiming 2**32 × 2**32 × 1 voxels: the int64 product wraps to 0."""
    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(np.uint8)
    hdr["dim"] = [3, 2**32, 2**32, 1, 1, 1, 1, 1]
    hdr["pixdim"] = [1.0] * 8
    hdr["vox_offset"] = 544
    hdr.set_sform(AFFINE, code=1)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4))


# Each bad input: (which file of case 0, how to break it, message fragment, seen by the
# header-only index?). Case 0 of a two-case BraTS 2021 dataset is broken; case 1 stays good.
BAD_INPUTS: dict[str, tuple[str, Callable[[Path], None], str, bool]] = {
    "voxel_cap": (
        "t1",
        lambda p: write_nifti(p, np.zeros((40, 40, 40), np.float32)),
        "exceeds the cap",
        True,
    ),
    # (nibabel itself repairs zero/negative pixdim on load, so non-finite is what gets through)
    "inf_spacing": (
        "t2",
        lambda p: patch_header(p, PIXDIM + 4, [float("inf")]),
        "non-finite or non-positive voxel spacing",
        True,
    ),
    "nan_spacing": (
        "t2",
        lambda p: patch_header(p, PIXDIM + 8, [float("nan")]),
        "non-finite or non-positive voxel spacing",
        True,
    ),
    "singular_affine": (
        "flair",
        lambda p: patch_header(p, SROW_Y, [0.0, 0.0, 0.0, 0.0]),
        "singular affine",
        True,
    ),
    "no_overlap": (
        "flair",
        lambda p: write_nifti(p, image("flair"), _shifted(500.0)),
        "modalities do not overlap in space",
        True,
    ),
    "missing_modality": ("t1ce", lambda p: p.unlink(), "missing modality t1ce", True),
    "zero_pixdim_qform_only": ("t1", _qform_only_zero_pixdim, "pixdim[3] is 0", True),
    "nifti2_wrapping_dims": ("t2", _nifti2_wrapping_dims, "above the limit", True),
    "not_3d": (
        "t1",
        lambda p: write_nifti(p, np.zeros((*SHAPE, 2), np.float32)),
        "expected a 3D image",
        True,
    ),
    "unreadable": (
        "t2",
        lambda p: p.write_bytes(b"not a nifti file"),
        "not a readable NIfTI file",
        True,
    ),
    "label_shape": (
        "seg",
        lambda p: write_nifti(p, INTERNAL[:, :, :-1]),
        "label grid does not match the image grid (shape differs)",
        True,
    ),
    "label_affine": (
        "seg",
        lambda p: write_nifti(p, INTERNAL, _shifted(3.0)),
        "label grid does not match the image grid (affine differs)",
        True,
    ),
    # Voxel-level problems: invisible to the header-only index, caught when loading.
    "nan_voxels": (
        "t2",
        lambda p: write_nifti(p, np.where(INTERNAL == 3, np.nan, image("t2"))),
        "non-finite voxel values",
        False,
    ),
    "truncated": ("flair", _truncate, "unreadable or truncated", False),
    "label_value_3_in_brats2021": (
        "seg",
        lambda p: write_nifti(p, INTERNAL),
        "unexpected label values 3",
        False,
    ),
    "label_negative": (
        "seg",
        lambda p: write_nifti(p, INTERNAL.astype(np.int16) - 1),
        "negative values -1",
        False,
    ),
    "label_fractional": (
        "seg",
        lambda p: write_nifti(p, INTERNAL * np.float32(0.5)),
        "fractional values 0.5",
        False,
    ),
}


@pytest.fixture
def broken(
    make_dataset: MakeDataset, request: pytest.FixtureRequest
) -> tuple[Path, list[str], Path]:
    """A two-case BraTS 2021 dataset whose first case has the bad input ``request.param``."""
    root, ids = make_dataset("brats2021", n=2)
    which, breaker, _, _ = BAD_INPUTS[request.param]
    path = root / ids[0] / f"{ids[0]}_{which}.nii.gz"
    breaker(path)
    return root, ids, path


@pytest.mark.parametrize("broken", list(BAD_INPUTS), indirect=True)
def test_bad_input_refused_naming_file(broken: tuple[Path, list[str], Path], request) -> None:
    root, ids, path = broken
    name = request.node.callspec.params["broken"]
    _, _, message, header_level = BAD_INPUTS[name]
    index = index_dataset(root, max_voxels=20**3)
    case = index.cases[0]
    problems = index.problems_of(ids[0])
    if header_level:
        assert any(message in p and path.name in p for p in problems), problems
    else:
        assert problems == []  # the index reads headers only
    with pytest.raises(ValueError) as info:
        load_case(case, max_voxels=20**3)
    assert message in str(info.value)
    assert path.name in str(info.value)
    assert ids[0] in str(info.value)
    assert index.problems_of(ids[1]) == []  # the good case is untouched


@pytest.mark.parametrize("broken", ["nan_voxels", "no_overlap"], indirect=True)
def test_iter_cases_skips_bad_case(
    broken: tuple[Path, list[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root, ids, path = broken
    index = index_dataset(root)
    with caplog.at_level(logging.WARNING):
        loaded = [v.case_id for v in iter_cases(index)]
    assert loaded == [ids[1]]
    assert ids[0] in index.bad_case_ids
    assert any(path.name in msg for key, msg in index.problems if key == ids[0])
    assert any(ids[0] in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("broken", ["nan_voxels", "missing_modality"], indirect=True)
def test_iter_cases_strict_raises(broken: tuple[Path, list[str], Path]) -> None:
    root, ids, path = broken
    with pytest.raises(ValueError, match=ids[0]):
        list(iter_cases(index_dataset(root), strict=True))


def test_iter_cases_strict_raises_on_dataset_level_problem(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("msd", n=1)
    write_nifti(root / "labelsTr" / "BRATS_999.nii.gz", INTERNAL)
    index = index_dataset(root)
    assert [v.case_id for v in iter_cases(index)] == ids
    with pytest.raises(ValueError, match="label without a matching image"):
        list(iter_cases(index, strict=True))


def test_msd_wrong_channel_count(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("msd", n=1)
    path = root / "imagesTr" / f"{ids[0]}.nii.gz"
    write_nifti(path, np.zeros((*SHAPE, 3), np.float32))
    (problem,) = index_dataset(root).problems_of(ids[0])
    assert "expected 4 channels on the 4th axis, found 3" in problem and path.name in problem


def test_msd_label_unexpected_value(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("msd", n=1)
    label = root / "labelsTr" / f"{ids[0]}.nii.gz"
    write_nifti(label, (INTERNAL == 3).astype(np.uint8) * 4)
    with pytest.raises(ValueError, match=r"BRATS_000.nii.gz: unexpected label values 4"):
        load_case(index_dataset(root).cases[0])


def test_label_on_another_modality_grid_is_accepted(tmp_path: Path) -> None:
    """Clinical data: modalities on different grids, label drawn on the FLAIR grid."""
    cid = "clin"
    flair_affine = AFFINE @ np.diag([0.5, 0.5, 1.0, 1.0])
    for m in ("t1", "t1ce", "t2"):
        write_nifti(tmp_path / cid / f"{cid}_{m}.nii.gz", image(m))
    write_nifti(tmp_path / cid / f"{cid}_flair.nii.gz", image("flair"), flair_affine)
    write_nifti(
        tmp_path / cid / f"{cid}_seg.nii.gz",
        np.asarray([0, 1, 2, 4], np.uint8)[INTERNAL],
        flair_affine,
    )
    index = index_dataset(tmp_path)
    assert index.problems == []
    volumes = load_case(index.cases[0])
    np.testing.assert_allclose(volumes.images["flair"].affine, flair_affine, atol=1e-5)
    np.testing.assert_allclose(volumes.images["t1"].affine, AFFINE, atol=1e-5)
    np.testing.assert_allclose(volumes.label.affine, flair_affine, atol=1e-5)  # type: ignore[union-attr]


def test_world_bbox_and_overlap_fraction() -> None:
    lo, hi = world_bbox((10, 10, 10), np.diag([2.0, 1.0, 1.0, 1.0]))
    np.testing.assert_allclose(lo, [-1.0, -0.5, -0.5])
    np.testing.assert_allclose(hi, [19.0, 9.5, 9.5])
    a = HeaderGrid(Path("a"), (10, 10, 10), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    b = HeaderGrid(Path("b"), (10, 10, 10), shifted)
    assert overlap_fraction([a, a]) == pytest.approx(1.0)
    assert overlap_fraction([a, b]) == pytest.approx(0.5)
    shifted[0, 3] = 50.0
    assert overlap_fraction([a, HeaderGrid(Path("c"), (10, 10, 10), shifted)]) == 0.0


def test_index_reads_no_voxel_data(make_dataset: MakeDataset) -> None:
    """A file with an intact header but truncated data passes the index, fails to load."""
    root, ids = make_dataset("brats2021", n=1)
    path = root / ids[0] / f"{ids[0]}_t1.nii.gz"
    _truncate(path)
    assert nib.load(str(path)).shape == SHAPE  # header intact
    assert index_dataset(root).problems == []
    with pytest.raises(ValueError, match="truncated"):
        load_case(index_dataset(root).cases[0])
