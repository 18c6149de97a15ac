"""An independent oracle for the DICOM reader, and MONOCHROME1.

SimpleITK's ``ImageSeriesReader`` (ITK + GDCM: its own slice sorting, rescale and geometry
code) reads the same files; the volume and the RAS affine :mod:`transmed.io.dicom` builds must
equal ITK's. ITK gives an LPS image: direction columns = unit vectors of the i, j, k axes,
``GetArrayFromImage`` in (k, j, i) order; so LPS affine = [direction · diag(spacing) | origin]
and RAS = diag(-1, -1, 1, 1) @ LPS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from transmed.data.synth.dicom import write_dicom_study
from transmed.io.dicom import LPS_TO_RAS, DicomError, DicomSeries, scan_folder


def _one_series(folder: Path) -> DicomSeries:
    scan = scan_folder(folder)
    (uid,) = scan.series
    return scan.build(uid)


def _itk_read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """ITK's volume as ``data[i, j, k]`` and its RAS affine."""
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    if len(names) == 1:  # one enhanced multi-frame file: GDCM reads its frames as the 3rd axis
        image = sitk.ReadImage(names[0])
    else:
        reader.SetFileNames(names)
        image = reader.Execute()
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return data, LPS_TO_RAS @ lps


def _assert_matches_itk(folder: Path) -> DicomSeries:
    series = _one_series(folder)
    volume = series.volume()
    itk_data, itk_affine = _itk_read(folder)
    assert volume.data.shape == itk_data.shape
    # ITK keeps direction cosines in single precision in places: 1e-4 mm on 1024² grids
    np.testing.assert_allclose(volume.affine, itk_affine, atol=1e-4)
    np.testing.assert_allclose(volume.data, itk_data, rtol=1e-5, atol=1e-3)
    assert np.ptp(volume.data) > 0  # a blank volume would match anything
    return series


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal"])
def test_synthetic_study_equals_simpleitk(orientation, tmp_path) -> None:
    study = write_dicom_study(tmp_path / "s", shape=(32, 32, 24), spacing=(1.2, 1.1, 2.0),
                              orientation=orientation, modalities=("t1ce", "flair"))  # fmt: skip
    for modality in ("t1ce", "flair"):
        series = _assert_matches_itk(study.files[modality][0].parent)
        np.testing.assert_allclose(series.affine, study.label.affine, atol=1e-5)
    # the slice normal of each orientation points where the generator put it (RAS)
    normal = series.affine[:3, 2] / np.linalg.norm(series.affine[:3, 2])
    expected = {"axial": [0, 0, 1], "sagittal": [1, 0, 0], "coronal": [0, -1, 0]}[orientation]
    np.testing.assert_allclose(normal, expected, atol=1e-6)


def _real(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:  # the larger files come with the pydicom-data package (a dev dependency)
        pytest.fail(f"{name} not available: pydicom-data (a dev dependency) is not installed")
    return str(path)


AXIAL, SAGITTAL, CORONAL = (1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)


@pytest.mark.parametrize(
    ("source", "orientation"),
    [
        ("MR_small.dcm", None),  # its own axial plane, signed 16-bit
        ("MR_small.dcm", SAGITTAL),
        ("MR_small.dcm", CORONAL),
        ("MR-SIEMENS-DICOM-WithOverlays.dcm", None),  # 484², 12 bits stored
        ("MR2_UNCR.dcm", None),  # 1024², oblique near-sagittal, non-integer rescale slope
    ],
    ids=["axial", "sagittal", "coronal", "siemens-axial", "oblique-rescaled"],
)
def test_real_mr_series_equals_simpleitk(source, orientation, tmp_path, dcm) -> None:
    _real(source)
    paths = dcm.small_mr_series(tmp_path / "mr", source=source, n=4, orientation=orientation,
                                roll=7)  # fmt: skip
    series = _assert_matches_itk(tmp_path / "mr")
    assert [f.path for f in series.frames] == paths  # slice order, not file-name order
    if orientation is not None:
        np.testing.assert_allclose(series.lps_affine[:3, 0] / series.spacing[0],
                                   orientation[:3], atol=1e-6)  # fmt: skip


def test_real_enhanced_mr_equals_simpleitk(tmp_path, dcm) -> None:
    _real("emri_small.dcm")
    dcm.make_enhanced_mr(tmp_path / "emr" / "x.dcm")  # 20° oblique, rescale 2x - 5
    series = _assert_matches_itk(tmp_path / "emr")
    assert series.is_multiframe and series.shape == (64, 64, 10)


# --------------------------------------------------------------------------------------------
# MONOCHROME1
# --------------------------------------------------------------------------------------------


def _to_monochrome1(folder: Path, *, only: int | None = None) -> None:
    """Rewrite a MONOCHROME2 series as a scanner exporting MONOCHROME1 would store it:
    stored' = max - stored (the same picture on a viewer)."""
    files = sorted(folder.iterdir())
    top = max(int(pydicom.dcmread(p).pixel_array.max()) for p in files)
    for n, p in enumerate(files):
        if only is not None and n != only:
            continue
        ds = pydicom.dcmread(p)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = (top - ds.pixel_array).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(p, enforce_file_format=True)


def test_monochrome1_is_inverted_before_normalisation(tmp_path) -> None:
    study = write_dicom_study(tmp_path / "s", shape=(32, 32, 24), spacing=(1.2, 1.1, 2.0),
                              modalities=("t1ce",))  # fmt: skip
    folder = study.files["t1ce"][0].parent
    expected = study.images["t1ce"].data.astype(np.float32)  # MONOCHROME2 values, (i, j, k)
    assert expected.min() == 0  # air is dark: the series minimum
    _to_monochrome1(folder)
    series = _one_series(folder)
    assert series.photometric == "MONOCHROME1" and series.inverted
    volume = series.volume()
    # a higher value means more signal again, within the series' own range
    np.testing.assert_array_equal(volume.data, expected)
    # ITK (GDCM) also inverts MONOCHROME1, over the 16-bit range: the two differ by a constant
    itk_data, itk_affine = _itk_read(folder)
    offset = itk_data.astype(np.float64) - volume.data
    np.testing.assert_allclose(offset, offset.flat[0])
    np.testing.assert_allclose(volume.affine, itk_affine, atol=1e-5)


def test_series_mixing_monochrome1_and_2_is_refused(tmp_path) -> None:
    study = write_dicom_study(tmp_path / "s", shape=(32, 32, 24), spacing=(1.2, 1.1, 2.0),
                              modalities=("t1ce",))  # fmt: skip
    folder = study.files["t1ce"][0].parent
    _to_monochrome1(folder, only=3)
    with pytest.raises(DicomError, match="mixes PhotometricInterpretation.*MONOCHROME1"):
        _one_series(folder)
