"""DICOM study reading: geometry, consistency checks, enhanced MR, modality rules, privacy."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless, generate_uid

from transmed.data.synth.dicom import write_dicom_study
from transmed.io.dicom import (
    DicomError,
    DicomSeries,
    ModalityRules,
    is_valid_uid,
    load_study,
    read_header,
    scan_folder,
)
from transmed.io.nifti import load_volume, save_volume

RAS = np.diag([-1.0, -1.0, 1.0])
SHAPE = (32, 32, 24)  # one shape for all studies: the synthetic template is cached per shape


def _one_series(folder: Path) -> DicomSeries:
    scan = scan_folder(folder)
    (uid,) = scan.series
    return scan.build(uid)


# --------------------------------------------------------------------------------------------
# synthetic study and geometry
# --------------------------------------------------------------------------------------------


def test_synthetic_study_is_a_scanner_like_export(synth_study, dcm) -> None:
    assert set(synth_study.files) == {"t1", "t1ce", "t2", "flair"}
    frames, studies, descriptions = set(), set(), {}
    for modality, paths in synth_study.files.items():
        assert len(paths) == dcm.SHAPE[2]
        names = [p.name for p in paths]
        assert names != sorted(names)  # file names are not in slice order
        for p in paths[:3]:
            ds = pydicom.dcmread(p)
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == pydicom.uid.MRImageStorage
            assert ds.SeriesInstanceUID == synth_study.series_uids[modality]
            assert all(is_valid_uid(str(u)) for u in (ds.SOPInstanceUID, ds.StudyInstanceUID))
            assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 0)
            assert ds.pixel_array.shape == (dcm.SHAPE[1], dcm.SHAPE[0])  # (rows, columns)
            frames.add(ds.FrameOfReferenceUID)
            studies.add(ds.StudyInstanceUID)
            descriptions[modality] = str(ds.SeriesDescription)
    assert frames == {synth_study.frame_of_reference_uid} and studies == {synth_study.study_uid}
    assert descriptions == {"t1": "T1 AX", "t1ce": "T1 POST GD AX", "t2": "T2 AX",
                            "flair": "FLAIR AX"}  # fmt: skip
    counts = np.bincount(synth_study.label.data.ravel(), minlength=4)
    assert counts[1:].sum() > 0 and counts.size == 4  # a tumour is there, labels 0-3


def test_known_voxel_lands_at_its_world_position(synth_study) -> None:
    study = load_study(Path(synth_study.files["t1"][0]).parents[1])
    series = study.series["t1ce"]
    assert series.shape == synth_study.label.shape3d
    np.testing.assert_allclose(series.affine, synth_study.label.affine, atol=1e-5)
    i, j, k = 5, 9, 17
    ds = pydicom.dcmread(synth_study.files["t1ce"][k])  # the file of slice k
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_step, col_step = (float(v) for v in ds.PixelSpacing)
    lps = (
        np.asarray(ds.ImagePositionPatient, float) + i * col_step * iop[:3] + j * row_step * iop[3:]
    )
    np.testing.assert_allclose(series.affine @ [i, j, k, 1.0], [*(RAS @ lps), 1.0], atol=1e-4)
    volume = series.volume()
    assert volume.data.dtype == np.float32
    assert volume.data[i, j, k] == float(ds.pixel_array[j, i])  # (rows, cols) = (j, i)
    assert series.spacing == pytest.approx((1.2, 1.1, 2.0))


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal"])
def test_volume_matches_ground_truth_and_nifti_round_trip(orientation, synth_study, tmp_path, dcm):
    if orientation == "axial":
        synth, folder = synth_study, Path(synth_study.files["t1"][0]).parents[1]
    else:
        folder = tmp_path / "study"
        synth = write_dicom_study(folder, shape=dcm.SHAPE, spacing=dcm.SPACING,
                                  orientation=orientation)  # fmt: skip
    study = load_study(folder)
    volumes = study.volumes()
    for modality, vol in volumes.items():
        np.testing.assert_array_equal(vol.data, synth.images[modality].data)
        np.testing.assert_allclose(vol.affine, synth.label.affine, atol=1e-5)
    # the label written to NIfTI and read back lies on the DICOM volume's grid
    save_volume(synth.label.data, synth.label.affine, tmp_path / "label.nii.gz")
    label = load_volume(tmp_path / "label.nii.gz", dtype=np.uint8)
    save_volume(volumes["t1ce"].data, volumes["t1ce"].affine, tmp_path / "t1ce.nii.gz")
    image = load_volume(tmp_path / "t1ce.nii.gz")
    assert label.shape3d == image.shape3d == study.series["t1ce"].shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    np.testing.assert_array_equal(image.data, synth.images["t1ce"].data)
    # the tumour sits in the same place in the world whatever the slice orientation
    tumour = np.argwhere(label.data > 0)
    centre = (label.affine @ np.c_[tumour, np.ones(len(tumour))].T)[:3].mean(axis=1)
    ax = np.argwhere(synth_study.label.data > 0)
    ax_centre = (synth_study.label.affine @ np.c_[ax, np.ones(len(ax))].T)[:3].mean(axis=1)
    assert len(tumour) == len(ax) > 0
    np.testing.assert_allclose(centre, ax_centre, atol=1e-4)


def test_rescale_slope_and_intercept_are_applied(study_copy) -> None:
    folder, files = study_copy(["t1ce"])

    def rescale(ds) -> None:
        ds.RescaleSlope, ds.RescaleIntercept = 2.5, -100

    for p in files["t1ce"]:
        pydicom_edit(p, rescale)
    series = _one_series(folder)
    stored = np.stack([pydicom.dcmread(p).pixel_array.T for p in files["t1ce"]], axis=-1)
    np.testing.assert_allclose(series.volume().data, stored * 2.5 - 100)


def pydicom_edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def test_real_single_frame_mr_reads_signed_pixels(tmp_path, dcm) -> None:
    paths = dcm.small_mr_series(tmp_path / "mr")
    series = _one_series(tmp_path / "mr")
    assert series.shape == (64, 64, 3)
    real = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert real.PixelRepresentation == 1  # signed
    np.testing.assert_array_equal(series.volume().data[:, :, 1], real.pixel_array.T)
    assert [f.path for f in series.frames] == paths  # sorted along the normal, not by name
    np.testing.assert_allclose(np.linalg.norm(series.affine[:3, 2]), 2.5, atol=1e-3)


# --------------------------------------------------------------------------------------------
# scanning
# --------------------------------------------------------------------------------------------


def test_scan_skips_non_dicom_dicomdir_and_non_mr(study_copy, tmp_path) -> None:
    folder, _ = study_copy(["t1ce"])
    (folder / "notes.txt").write_text("not dicom")
    (folder / "junk.dcm").write_bytes(b"\x00" * 300)
    shutil.copyfile(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    (folder / "nested").mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm"), folder / "nested" / "ct.dcm")
    scan = scan_folder(folder)
    reasons = {p.name: r for p, r in ((s.path, s.reason) for s in scan.skipped)}
    assert set(reasons) == {"notes.txt", "junk.dcm", "DICOMDIR", "ct.dcm"}
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert "not an MR image" in reasons["ct.dcm"] and "CT Image Storage" in reasons["ct.dcm"]
    assert len(scan.series) == 1


def test_scan_caps_file_count_and_size(study_copy) -> None:
    folder, _ = study_copy(["t1ce"])
    with pytest.raises(DicomError, match="more than 5 files"):
        scan_folder(folder, max_files=5)
    scan = scan_folder(folder, max_file_bytes=100)
    assert not scan.series and all("larger than" in s.reason for s in scan.skipped)


def test_explicit_non_dicom_file_is_refused(tmp_path) -> None:
    path = tmp_path / "image.dcm"
    path.write_bytes(b"GIF89a" + b"\x00" * 500)
    with pytest.raises(DicomError, match="image.dcm: not a DICOM file"):
        load_study(path)
    with pytest.raises(DicomError, match="not an MR image"):
        scan_folder(get_testdata_file("CT_small.dcm"))


@pytest.mark.parametrize("keep", [700, 1100, -100])
def test_truncated_file_is_refused_not_skipped(keep, study_copy) -> None:
    folder, files = study_copy(["t1ce"])
    path = files["t1ce"][0]  # the edge slice: skipping it would silently shorten the volume
    path.write_bytes(path.read_bytes()[:keep])  # cut inside the header, or in the pixels
    if keep > 0:
        with pytest.raises(DicomError, match="truncated"):
            read_header(path)
    with pytest.raises(DicomError, match="truncated"):
        load_study(folder, modalities=("t1ce",)).volumes()


# --------------------------------------------------------------------------------------------
# refusals of inconsistent series
# --------------------------------------------------------------------------------------------


def _shift(ds, dz: float) -> None:
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + dz]


def _resize(ds) -> None:
    ds.Rows = ds.Rows - 2
    ds.PixelData = ds.PixelData[: ds.Rows * ds.Columns * 2]


CORRUPTIONS = {
    "matrix": ("one", _resize, "mixed image sizes"),
    "pixel spacing": ("one", lambda ds: setattr(ds, "PixelSpacing", [1.3, 1.3]),
                      "PixelSpacing differs"),
    "orientation": ("one", lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]),
                    "mixed orientations"),
    "duplicate": ("one", lambda ds: _shift(ds, -2.0), "duplicate slice position"),
    "irregular": ("one", lambda ds: _shift(ds, 0.6), "not a regular stack"),
    "non-orthonormal": ("all", lambda ds: setattr(ds, "ImageOrientationPatient",
                                                  [1, 0, 0, 0.6, 0.8, 0.1]), "orthonormal"),
    "zero spacing": ("all", lambda ds: setattr(ds, "PixelSpacing", [0, 1.1]),
                     "non-positive PixelSpacing"),
    "colour": ("one", lambda ds: setattr(ds, "SamplesPerPixel", 3), "SamplesPerPixel is 3"),
    "no geometry": ("one", lambda ds: delattr(ds, "ImagePositionPatient"),
                    "missing ImagePositionPatient"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_inconsistent_series_are_refused_before_pixels(case, study_copy, monkeypatch) -> None:
    folder, files = study_copy(["t1ce"])
    which, change, message = CORRUPTIONS[case]
    for path in files["t1ce"][10:11] if which == "one" else files["t1ce"]:
        pydicom_edit(path, change)
    monkeypatch.setattr(pydicom, "dcmread", _headers_only(pydicom.dcmread))
    with pytest.raises(DicomError, match=message) as info:
        _one_series(folder)
    assert "series" in str(info.value)


def _headers_only(read):
    def guarded(*args, **kwargs):
        if not kwargs.get("stop_before_pixels"):
            raise AssertionError("pixel data read before the header checks")
        return read(*args, **kwargs)

    return guarded


def test_missing_slice_is_refused(study_copy) -> None:
    folder, files = study_copy(["t1ce"])
    files["t1ce"][12].unlink()
    with pytest.raises(DicomError, match=r"missing slice\(s\): a gap of 4.000 mm"):
        _one_series(folder)


def test_voxel_cap_is_checked_from_headers(synth_study, monkeypatch) -> None:
    folder = Path(synth_study.files["t1"][0]).parents[1]
    monkeypatch.setattr(pydicom, "dcmread", _headers_only(pydicom.dcmread))
    with pytest.raises(DicomError, match="exceeds the cap of 1,000"):
        load_study(folder, max_voxels=1000)
    monkeypatch.undo()
    study = load_study(folder)
    with pytest.raises(DicomError, match="exceeds the cap"):
        study.series["t1"].volume(max_voxels=1000)


def test_short_and_missing_pixel_data_are_refused(study_copy) -> None:
    folder, files = study_copy(["t1ce"])
    pydicom_edit(files["t1ce"][3], lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]))
    series = _one_series(folder)
    with pytest.raises(DicomError, match="PixelData has 100 bytes, fewer than the 2048"):
        series.volume()
    pydicom_edit(files["t1ce"][3], lambda ds: delattr(ds, "PixelData"))
    with pytest.raises(DicomError, match="ends before its PixelData element"):
        _one_series(folder)
    with pytest.raises(DicomError, match="no PixelData element"):
        series.volume()  # the file changed after the scan


def test_real_truncated_file_is_refused(tmp_path, dcm) -> None:
    dcm.small_mr_series(tmp_path / "mr", source="MR_truncated.dcm")
    series = _one_series(tmp_path / "mr")
    with pytest.raises(DicomError, match="PixelData has 8130 bytes, fewer than the 8192"):
        series.volume()


def test_unsupported_transfer_syntax_is_refused(study_copy) -> None:
    folder, files = study_copy(["t1ce"])

    def mpeg2(ds) -> None:  # a video syntax: no pydicom decoder exists
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])

    pydicom_edit(files["t1ce"][0], mpeg2)
    with pytest.raises(DicomError, match="MPEG2.*cannot be decoded"):
        _one_series(folder)


@pytest.mark.parametrize(("depth", "message"), [(40, "nested deeper than 16"),
                                                (20000, "nested")])  # fmt: skip
def test_deeply_nested_sequences_are_refused(depth, message, study_copy, dcm) -> None:
    folder, files = study_copy(["t1ce"])
    dcm.insert_before_pixel_data(files["t1ce"][0], dcm.nested_sequence_bytes(depth))
    with pytest.raises(DicomError, match=message):
        read_header(files["t1ce"][0])
    scan = scan_folder(folder)  # in a folder scan the file is skipped, not fatal
    assert len(scan.skipped) == 1 and "nested" in scan.skipped[0].reason


def test_moderate_nesting_is_read(study_copy, dcm) -> None:
    _, files = study_copy(["t1ce"])
    dcm.insert_before_pixel_data(files["t1ce"][0], dcm.nested_sequence_bytes(6))
    assert "ContentSequence" in read_header(files["t1ce"][0])


# --------------------------------------------------------------------------------------------
# enhanced (multi-frame) MR
# --------------------------------------------------------------------------------------------


def test_real_enhanced_mr_without_functional_groups_is_refused(tmp_path) -> None:
    path = tmp_path / "emri.dcm"
    shutil.copyfile(get_testdata_file("emri_small.dcm"), path)
    with pytest.raises(DicomError, match="PerFrameFunctionalGroupsSequence"):
        _one_series(tmp_path)


@pytest.mark.parametrize("source", ["emri_small.dcm", "emri_small_RLE.dcm"])
def test_enhanced_mr_frames_are_split_and_sorted(source, tmp_path, dcm) -> None:
    order = [3, 1, 0, 2, 4, 9, 8, 7, 6, 5]  # frame f shows slice order[f]
    ds, geo = dcm.make_enhanced_mr(tmp_path / "e.dcm", order=order, source=source)
    assert ds.file_meta.TransferSyntaxUID == (RLELossless if "RLE" in source
                                              else pydicom.uid.ExplicitVRLittleEndian)  # fmt: skip
    series = _one_series(tmp_path)
    assert series.is_multiframe and series.shape == (64, 64, 10)
    assert series.spacing == pytest.approx((0.8, 0.9, 1.2))
    axes = series.affine[:3, :3] / np.asarray(series.spacing)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-6)  # orthonormal directions
    np.testing.assert_allclose(RAS @ axes[:, 2], geo["normal"], atol=1e-6)
    for k, frame in enumerate(series.frames):
        assert order[frame.frame] == k
        np.testing.assert_allclose(series.affine @ [0, 0, k, 1], [*(RAS @ frame.position), 1])
        np.testing.assert_allclose(frame.position, geo["origin"] + 1.2 * k * geo["normal"],
                                   atol=1e-5)  # fmt: skip
    volume = series.volume()
    pixels = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array.astype(float)
    for f, k in enumerate(order):
        np.testing.assert_allclose(volume.data[:, :, k], pixels[f].T * 2.0 - 5.0)


def test_enhanced_mr_duplicate_frame_positions_are_refused(tmp_path, dcm) -> None:
    dcm.make_enhanced_mr(tmp_path / "e.dcm", order=[0, 1, 2, 3, 4, 5, 6, 7, 8, 8])
    with pytest.raises(DicomError, match="duplicate slice position"):
        _one_series(tmp_path)


# --------------------------------------------------------------------------------------------
# modality rules and study loading
# --------------------------------------------------------------------------------------------

NAMES = [
    ("T1 AX", None, "t1"), ("T1 SE AX PRE", None, "t1"), ("t1_mprage_sag_p2_iso", None, "t1"),
    ("Sag T1W 3D", None, "t1"), ("MPRAGE", None, "t1"),
    ("T1CE", None, "t1ce"), ("T1C", None, "t1ce"), ("T1+C AX", None, "t1ce"),
    ("T1 POST GD AX", None, "t1ce"), ("AX T1 POST GAD", None, "t1ce"),
    ("t1_mprage_sag_p2_iso", "GADOBUTROL", "t1ce"), ("3D T1 post-contrast", None, "t1ce"),
    ("T1W_SE_GD", None, "t1ce"), ("MPRAGE +C", None, "t1ce"), ("T1 SE AX PRE", "GAD", "t1"),
    ("T2 AX", None, "t2"), ("T2W TSE", None, "t2"), ("ax t2 frfse", None, "t2"),
    ("T2 FLAIR AX", None, "flair"), ("FLAIR", None, "flair"),
    ("t2_tirm_tra_dark-fluid", None, "flair"), ("AX T2 FLAIR POST", "GAD", "flair"),
    ("t2f", None, "flair"), ("SAG T1 FLAIR", None, "t1"),
    ("DWI b1000", None, None), ("ADC", None, None), ("T2* GRE", None, None),
    ("Localizer", None, None), ("SWI", None, None), ("T1 COR", None, "t1"),
]  # fmt: skip


@pytest.mark.parametrize(("description", "agent", "expected"), NAMES)
def test_default_modality_rules(description, agent, expected) -> None:
    ds = pydicom.Dataset()
    ds.SeriesDescription = description
    if agent:
        ds.ContrastBolusAgent = agent
    assert ModalityRules.default().classify(ds) == expected


def test_rules_use_protocol_name_and_load_from_yaml(tmp_path) -> None:
    ds = pydicom.Dataset()
    ds.SeriesDescription, ds.ProtocolName = "Series 7", "t1_se_tra_post"
    assert ModalityRules.default().classify(ds) == "t1ce"
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {modality: t2, match: ['series 7']}\n")
    assert ModalityRules.from_yaml(path).classify(ds) == "t2"
    path.write_text("rules:\n  - {modality: t2, match: ['(unclosed']}\n")
    with pytest.raises(ValueError, match="invalid regular expression"):
        ModalityRules.from_yaml(path)
    with pytest.raises(ValueError, match="modality must be one of"):
        ModalityRules.from_dict({"rules": [{"modality": "dwi", "match": ["x"]}]})


def test_missing_modality_is_named(tmp_path) -> None:
    write_dicom_study(tmp_path / "s", shape=SHAPE, modalities=("t1", "t1ce", "t2"))
    with pytest.raises(DicomError, match="no series for modality flair"):
        load_study(tmp_path / "s")
    study = load_study(tmp_path / "s", modalities=("t1", "t1ce", "t2"))
    assert set(study.series) == {"t1", "t1ce", "t2"}


def test_duplicate_modality_choice_is_recorded(study_copy, caplog) -> None:
    folder, files = study_copy()
    uid = generate_uid()
    for n, path in enumerate(files["t1ce"][4:20]):  # a shorter second T1ce series, numbered later

        def second(ds, n=n) -> None:
            ds.SeriesInstanceUID, ds.SeriesNumber = uid, 9
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()

        target = folder / "S0009" / f"x{n}.dcm"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, target)
        pydicom_edit(target, second)
    caplog.set_level(logging.INFO)
    study = load_study(folder)
    original = pydicom.dcmread(files["t1ce"][0]).SeriesInstanceUID
    assert study.series["t1ce"].series_uid == original  # more slices wins over the later number
    assert study.choices["t1ce"].candidates == [original, uid]
    assert "2 series match" in caplog.text


def test_localizer_with_mixed_orientations_is_left_unmatched(study_copy) -> None:
    folder, files = study_copy()
    uid = generate_uid()
    for n, iop in enumerate(([1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1])):

        def localizer(ds, iop=iop) -> None:
            ds.SeriesInstanceUID, ds.SeriesDescription, ds.ProtocolName = uid, "Localizer", "loc"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.ImageOrientationPatient = iop

        target = folder / "LOC" / f"{n}.dcm"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(files["t1"][0], target)
        pydicom_edit(target, localizer)
    study = load_study(folder)
    assert (uid, "Localizer") in study.unmatched and len(study.series) == 4


def test_several_studies_need_a_study_uid(tmp_path) -> None:
    write_dicom_study(tmp_path / "mixed" / "a", shape=SHAPE)
    b = write_dicom_study(tmp_path / "mixed" / "b", shape=SHAPE, seed=1)
    with pytest.raises(DicomError, match="holds 2 studies"):
        load_study(tmp_path / "mixed")
    assert load_study(tmp_path / "mixed", study_uid=b.study_uid).study_uid == b.study_uid
    with pytest.raises(DicomError, match="not found"):
        load_study(tmp_path / "mixed", study_uid="1.2.3.4")
    with pytest.raises(DicomError, match="malformed"):
        load_study(tmp_path / "mixed", study_uid="../../etc")


@pytest.mark.parametrize(("uid", "ok"), [("1.2.840.10008.1.2", True), ("1", True),
    ("1..2", False), ("1.2.", False), ("../x", False), ("1.2a", False), ("1." * 40 + "1", False),
    ("", False)])  # fmt: skip
def test_uid_grammar(uid, ok) -> None:
    assert is_valid_uid(uid) is ok


def test_no_patient_identifiers_in_messages_or_logs(study_copy, tmp_path, caplog, dcm) -> None:
    caplog.set_level(logging.DEBUG)
    messages = []
    folder, files = study_copy(["t1", "t1ce", "t2"])
    (folder / "junk.bin").write_bytes(b"junk")
    for call in (
        lambda: load_study(folder),  # flair missing
        lambda: load_study(folder, max_voxels=10, modalities=("t1",)),
        lambda: (pydicom_edit(files["t1"][5], lambda ds: _shift(ds, 0.7)),
                 load_study(folder, modalities=("t1",))),
        lambda: (files["t1"][3].write_bytes(files["t1"][3].read_bytes()[:900]),
                 read_header(files["t1"][3])),
    ):  # fmt: skip
        with pytest.raises(DicomError) as info:
            call()
        messages.append(str(info.value))
    scan = scan_folder(folder)
    messages += [s.reason for s in scan.skipped]
    text = "\n".join(messages) + caplog.text
    assert "flair" in messages[0] and "exceeds the cap" in messages[1]
    for secret in (dcm.PATIENT_NAME, *dcm.PATIENT_NAME.split("^"), dcm.PATIENT_ID):
        assert secret not in text
