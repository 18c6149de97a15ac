"""Readers for each layout, detection, writing predictions back, and ``transmed data index``."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fake_layouts import (
    AFFINE,
    INTERNAL,
    MOD_OFFSET,
    NNUNET_REGION_LABELS,
    RAW_VALUE,
    SHAPE,
    image,
    write_nifti,
)
from typer.testing import CliRunner

from transmed.cli import app
from transmed.data.labels import MODALITIES
from transmed.data.layouts import (
    LAYOUTS,
    detect_layout,
    index_dataset,
    iter_cases,
    load_case,
    write_prediction,
)

MakeDataset = Callable[..., tuple[Path, list[str]]]


def _assert_loaded_correctly(root: Path, layout: str, case_index: int = 0) -> None:
    """Each modality comes from the right file/channel; the label is INTERNAL, uint8."""
    index = index_dataset(root)
    case = index.cases[case_index]
    volumes = load_case(case)
    assert list(volumes.images) == list(MODALITIES)
    for m, vol in volumes.images.items():
        assert vol.data.shape == SHAPE and vol.data.dtype == np.float32
        assert abs(float(vol.data.mean()) - MOD_OFFSET[m]) < 1.0, m
        np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-5)
    assert volumes.label is not None and volumes.label.data.dtype == np.uint8
    np.testing.assert_array_equal(volumes.label.data, INTERNAL)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reader_detects_indexes_and_loads(make_dataset: MakeDataset, layout: str) -> None:
    root, ids = make_dataset(layout, n=2)
    assert detect_layout(root) == layout
    index = index_dataset(root)
    assert index.layout == layout
    assert [c.case_id for c in index.cases] == ids
    assert index.problems == []
    assert all(c.modalities == MODALITIES and c.has_label for c in index.cases)
    _assert_loaded_correctly(root, layout)


def test_brats2023_men_prefix(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("brats2023", n=1, prefix="MEN")
    assert ids == ["BraTS-MEN-00000-000"]
    assert detect_layout(root) == "brats2023"
    _assert_loaded_correctly(root, "brats2023")


def test_msd_channel_order_from_dataset_json(make_dataset: MakeDataset) -> None:
    root, _ = make_dataset("msd", n=1)
    case = index_dataset(root).cases[0]
    # fake_layouts writes T1w, FLAIR, T2w, t1gd: not MSD's default FLAIR, T1w, T1gd, T2w.
    assert case.channels == {"t1": 0, "t1ce": 3, "t2": 2, "flair": 1}
    assert case.n_channels == 4
    _assert_loaded_correctly(root, "msd")


def test_msd_without_dataset_json_uses_default_order(tmp_path: Path) -> None:
    stack = np.stack([image(m) for m in ("flair", "t1", "t1ce", "t2")], axis=-1)
    write_nifti(tmp_path / "imagesTr" / "BRATS_001.nii.gz", stack)
    assert detect_layout(tmp_path) == "msd"
    volumes = load_case(index_dataset(tmp_path).cases[0])
    assert {m: round(float(v.data.mean()), -2) for m, v in volumes.images.items()} == MOD_OFFSET
    assert volumes.label is None


def test_msd_test_cases_and_hidden_files(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("msd", n=2, n_test=1)
    (root / "imagesTr" / f"._{ids[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    index = index_dataset(root)
    assert [c.case_id for c in index.cases] == ids
    test_case = index.cases[-1]
    assert test_case.subset == "test" and test_case.label is None
    assert index.problems == []  # unlabelled test cases are valid
    assert load_case(test_case).label is None


@pytest.mark.parametrize("labels", [None, NNUNET_REGION_LABELS], ids=["class", "region"])
def test_nnunet_label_styles(make_dataset: MakeDataset, labels: dict | None) -> None:
    root, _ = make_dataset("nnunet", n=1, nnunet_labels=labels)
    case = index_dataset(root).cases[0]
    assert dict(case.convention.mapping) == {v: RAW_VALUE["nnunet"].index(v) for v in range(4)}
    _assert_loaded_correctly(root, "nnunet")


def test_nnunet_unknown_channel_is_an_error(make_dataset: MakeDataset) -> None:
    root, _ = make_dataset("nnunet", n=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"]["0"] = "CT"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"dataset.json: channel name 'CT'"):
        index_dataset(root)


def test_nnunet_needs_dataset_json(make_dataset: MakeDataset) -> None:
    root, _ = make_dataset("nnunet", n=1)
    (root / "dataset.json").unlink()
    with pytest.raises(ValueError, match="needs .*dataset.json"):
        index_dataset(root)


def test_single_case_folder_and_t1c_alias(tmp_path: Path) -> None:
    case = tmp_path / "TCGA-XX-0001"
    for m, suffix in zip(MODALITIES, ("t1", "t1c", "t2", "flair"), strict=True):
        write_nifti(case / f"TCGA-XX-0001_{suffix}.nii.gz", image(m))
    assert detect_layout(case) == "brats2021"
    index = index_dataset(case)
    assert [c.case_id for c in index.cases] == ["TCGA-XX-0001"] and index.problems == []
    volumes = load_case(index.cases[0])
    assert abs(float(volumes.images["t1ce"].data.mean()) - MOD_OFFSET["t1ce"]) < 1.0
    assert volumes.label is None


def test_unlabelled_dataset_has_no_problems(make_dataset: MakeDataset) -> None:
    root, _ = make_dataset("brats2023", n=2, labelled=False)
    index = index_dataset(root)
    assert index.problems == [] and not any(c.has_label for c in index.cases)


def test_missing_label_and_modality_reported(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("brats2021", n=3)
    (root / ids[1] / f"{ids[1]}_seg.nii.gz").unlink()
    (root / ids[2] / f"{ids[2]}_flair.nii.gz").unlink()
    index = index_dataset(root)
    assert index.problems_of(ids[0]) == []
    assert index.problems_of(ids[1]) == ["missing label (other cases have one)"]
    (problem,) = index.problems_of(ids[2])
    assert "missing modality flair" in problem and f"{ids[2]}_flair.nii.gz" in problem
    assert [c.case_id for c in index.good_cases] == [ids[0]]
    with pytest.raises(ValueError, match="missing modality flair"):
        index_dataset(root, strict=True)


def test_stray_files_reported(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("msd", n=2)
    shutil.copy(root / "labelsTr" / f"{ids[0]}.nii.gz", root / "labelsTr" / "BRATS_999.nii.gz")
    index = index_dataset(root)
    assert (str(root / "labelsTr" / "BRATS_999.nii.gz"), "label without a matching image") in (
        index.problems
    )
    assert [c.case_id for c in index.good_cases] == ids


def test_non_case_folder_with_nifti_reported(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("brats2021", n=1)
    write_nifti(root / "extras" / "scan.nii.gz", INTERNAL)
    index = index_dataset(root)
    assert [c.case_id for c in index.cases] == ids
    ((key, message),) = index.problems
    assert key == str(root / "extras") and "holds NIfTI files but none named" in message


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("unrecognised", "not a recognised dataset layout"),
    ],
)
def test_detect_layout_errors(tmp_path: Path, setup: str, expected: str) -> None:
    root = tmp_path / "data"
    if setup != "missing":
        root.mkdir()
    if setup == "unrecognised":
        write_nifti(root / "scan.nii.gz", INTERNAL)
    with pytest.raises(ValueError, match=expected) as info:
        detect_layout(root)
    if setup == "unrecognised":
        for layout in LAYOUTS:
            assert layout in str(info.value)


def test_named_layout_that_does_not_match(make_dataset: MakeDataset) -> None:
    root, _ = make_dataset("brats2021", n=1)
    with pytest.raises(ValueError, match="no brats2023 cases found"):
        index_dataset(root, layout="brats2023")
    with pytest.raises(ValueError, match="unknown layout 'brats'"):
        index_dataset(root, layout="brats")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_write_prediction_in_layout_values(tmp_path: Path, layout: str) -> None:
    path = write_prediction(INTERNAL, AFFINE, tmp_path / "out", "CASE_1", layout)
    assert path == tmp_path / "out" / "CASE_1.nii.gz"
    img = nib.load(str(path))
    raw = np.asanyarray(img.dataobj)
    assert raw.dtype == np.uint8
    expected = np.asarray(RAW_VALUE[layout], dtype=np.uint8)[INTERNAL]
    np.testing.assert_array_equal(raw, expected)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    assert [p.name for p in path.parent.iterdir()] == ["CASE_1.nii.gz"]  # no temp file left


def test_write_prediction_uses_case_convention(make_dataset: MakeDataset, tmp_path: Path) -> None:
    root, _ = make_dataset("nnunet", n=1)
    case = index_dataset(root).cases[0]
    path = write_prediction(
        INTERNAL, AFFINE, tmp_path / "p", case.case_id, "nnunet", convention=case.convention
    )
    np.testing.assert_array_equal(
        load_case(case).label.data,  # type: ignore[union-attr]
        INTERNAL,
    )
    written = np.asanyarray(nib.load(str(path)).dataobj)
    np.testing.assert_array_equal(written, np.asanyarray(nib.load(str(case.label)).dataobj))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"case_id": "../evil"}, "not usable as a file name"),
        ({"layout": "kits"}, "unknown layout"),
        ({"internal_labels": INTERNAL[0]}, "expected a 3D"),
        ({"affine": np.zeros((4, 4))}, "singular"),
        ({"internal_labels": INTERNAL + 1}, "unexpected label values 4"),
    ],
)
def test_write_prediction_refuses_bad_arguments(
    tmp_path: Path, kwargs: dict, expected: str
) -> None:
    args = {
        "internal_labels": INTERNAL,
        "affine": AFFINE,
        "out_dir": tmp_path,
        "case_id": "c",
        "layout": "brats2021",
    }
    with pytest.raises(ValueError, match=expected):
        write_prediction(**{**args, **kwargs})


def test_iter_cases_yields_good_cases(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("brats2021", n=2)
    loaded = [v.case_id for v in iter_cases(index_dataset(root))]
    assert loaded == ids


# ---- the CLI -------------------------------------------------------------------------------

runner = CliRunner()


def _flat(text: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_cli_index_lists_cases(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("brats2023", n=2, prefix="PED")
    result = runner.invoke(app, ["data", "index", str(root), "--strict"])
    assert result.exit_code == 0, result.output
    assert "layout: brats2023" in result.output
    assert "cases: 2 (0 with problems)" in result.output
    for cid in ids:
        assert f"{cid}  t1 t1ce t2 flair  label" in result.output


def test_cli_index_reports_problems_and_strict_exit(make_dataset: MakeDataset) -> None:
    root, ids = make_dataset("brats2021", n=2)
    (root / ids[1] / f"{ids[1]}_t2.nii.gz").unlink()
    result = runner.invoke(app, ["data", "index", str(root)])
    assert result.exit_code == 0, result.output
    assert f"{ids[1]}  t1 t1ce -- flair  label" in result.output
    assert "! missing modality t2" in result.output
    assert "cases: 2 (1 with problems)" in result.output
    strict = runner.invoke(app, ["data", "index", str(root), "--strict"])
    assert strict.exit_code == 1
    assert "missing modality t2" in strict.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{root}/nothing_here"], "does not exist"),
        (["{root}/empty"], "is empty"),
        (["{root}/junk"], "not a recognised dataset layout"),
        (["{root}/junk", "--layout", "kits"], "'kits' is not one of"),
    ],
)
def test_cli_index_bad_folder_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a dataset")
    result = runner.invoke(app, ["data", "index", *[a.format(root=tmp_path) for a in args]])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # a usage error, not a traceback
    assert expected in _flat(result.output)


def test_real_clinical_case_on_three_grids(tcga_dir: Path, tmp_path: Path) -> None:
    """The TCGA example: native scanner space, t1/t1c, t2 and flair on three different grids
    (tests/conftest.py finds it, or the test fails saying where it looked)."""
    (tmp_path / tcga_dir.name).symlink_to(tcga_dir.resolve(), target_is_directory=True)
    index = index_dataset(tmp_path)  # a dataset of this one case, wherever it lives
    assert index.layout == "brats2021" and index.problems == []
    (case,) = index.cases
    volumes = load_case(case)
    shapes = {m: v.shape3d for m, v in volumes.images.items()}
    assert shapes == {
        "t1": (256, 224, 26),
        "t1ce": (256, 224, 26),
        "t2": (224, 256, 26),
        "flair": (208, 256, 26),
    }
    assert not np.allclose(volumes.images["t2"].affine, volumes.images["flair"].affine)
    assert volumes.label is None
