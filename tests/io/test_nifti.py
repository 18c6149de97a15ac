"""NIfTI header checks on the raw header, before nibabel repairs it or anything is allocated."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from transmed.io.nifti import MAX_DIM, NiftiHeaderError, check_nifti_header, load_volume

PIXDIM = 76  # byte offset of pixdim (8 × float32) in a NIfTI-1 header
SPACING = (2.0, 1.5, 3.0)


def _write(path: Path, shape=(6, 5, 4), *, qform: bool = True, sform: bool = True,
           sform_affine: np.ndarray | None = None) -> Path:  # fmt: skip
    affine = np.diag([*SPACING, 1.0])
    img = nib.Nifti1Image(np.ones(shape, np.float32), affine)
    img.set_qform(affine if qform else None, code=1 if qform else 0)
    img.set_sform(sform_affine if sform_affine is not None else affine, code=1 if sform else 0)
    nib.save(img, str(path))
    return path


def _patch_pixdim(path: Path, index: int, value: float) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[PIXDIM + 4 * index : PIXDIM + 4 * index + 4] = np.float32(value).tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))


def _nifti2_header_only(path: Path, dims: list[int]) -> Path:
    """A NIfTI-2 file with the given dims and no voxel data (the header is all that is read)."""
    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(np.uint8)
    hdr["dim"] = [len(dims), *dims] + [1] * (7 - len(dims))
    hdr["pixdim"] = [1.0] * 8
    hdr["vox_offset"] = 544
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    path.write_bytes(hdr.binaryblock + b"\0" * 4)
    return path


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_zero_pixdim_in_a_qform_only_header_is_refused(tmp_path, axis):
    # nibabel replaces a zero pixdim by 1 mm on load, which silently changes the geometry.
    path = _write(tmp_path / "q.nii.gz", sform=False)
    _patch_pixdim(path, axis, 0.0)
    assert nib.load(str(path)).header.get_zooms()[axis - 1] == 1.0  # what nibabel makes of it
    with pytest.raises(NiftiHeaderError, match=rf"q\.nii\.gz: pixdim\[{axis}\] is 0"):
        check_nifti_header(path)


def test_zero_pixdim_with_an_sform_warns_and_keeps_the_sform_geometry(tmp_path, caplog):
    path = _write(tmp_path / "s.nii.gz")
    _patch_pixdim(path, 2, 0.0)
    with caplog.at_level(logging.WARNING, logger="transmed.io.nifti"):
        vol = load_volume(path)
    np.testing.assert_allclose(vol.spacing, SPACING)
    assert "pixdim[2] is 0" in caplog.text and "s.nii.gz" in caplog.text


def test_qform_and_sform_that_disagree_warn(tmp_path, caplog):
    moved = np.diag([*SPACING, 1.0])
    moved[:3, 3] = [0.0, 12.0, 0.0]  # the sform puts the head 12 mm away from the qform
    path = _write(tmp_path / "qs.nii.gz", sform_affine=moved)
    with caplog.at_level(logging.WARNING, logger="transmed.io.nifti"):
        check_nifti_header(path)
    assert "qform and sform disagree" in caplog.text and "12.0 mm" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transmed.io.nifti"):
        check_nifti_header(_write(tmp_path / "ok.nii.gz"))
    assert caplog.text == ""


def test_single_slice_volume_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="transmed.io.nifti"):
        check_nifti_header(_write(tmp_path / "slice.nii.gz", shape=(6, 5, 1)))
    assert "single slice" in caplog.text and "slice.nii.gz" in caplog.text


def test_nifti2_dims_whose_product_wraps_int64_are_refused(tmp_path, monkeypatch):
    # 2**32 * 2**32 * 1 is 0 in int64: the voxel cap must be computed with Python integers.
    path = _nifti2_header_only(tmp_path / "wrap.nii", [2**32, 2**32, 1])
    assert int(np.prod(nib.load(str(path)).shape, dtype=np.int64)) == 0
    with pytest.raises(NiftiHeaderError, match=r"wrap\.nii: dimension 4,294,967,296 .*limit"):
        check_nifti_header(path)
    monkeypatch.setattr("transmed.io.nifti.MAX_DIM", 2**40)  # the voxel cap alone holds too
    with pytest.raises(NiftiHeaderError, match=r"wrap\.nii: .*exceeds the cap"):
        check_nifti_header(path)


def test_one_absurd_dimension_is_refused_even_under_the_voxel_cap(tmp_path):
    path = _nifti2_header_only(tmp_path / "long.nii", [MAX_DIM + 1, 1, 1])
    with pytest.raises(NiftiHeaderError, match=rf"long\.nii: dimension {MAX_DIM + 1:,} .*limit"):
        check_nifti_header(path)
