"""Label conventions: layout values <-> internal labels <-> nested regions; dataset.json names."""

from __future__ import annotations

import numpy as np
import pytest
from fake_layouts import INTERNAL, RAW_VALUE, raw_labels

from transmed.data.dataset_json import (
    channel_modalities,
    convention_from_labels,
    modality_from_name,
)
from transmed.data.labels import (
    CONVENTIONS,
    MODALITIES,
    REGIONS,
    LabelConvention,
    from_internal,
    labels_to_regions,
    regions_to_labels,
    to_internal,
)

LAYOUT_CONVENTIONS = ["brats2021", "brats2023", "msd", "nnunet"]


def test_fixed_orders() -> None:
    assert MODALITIES == ("t1", "t1ce", "t2", "flair")
    assert REGIONS == ("WT", "TC", "ET")


@pytest.mark.parametrize("convention", LAYOUT_CONVENTIONS)
def test_to_internal_matches_documented_values(convention: str) -> None:
    out = to_internal(raw_labels(convention), convention)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, INTERNAL)


@pytest.mark.parametrize("convention", LAYOUT_CONVENTIONS)
def test_from_internal_writes_layout_values_and_round_trips(convention: str) -> None:
    raw = from_internal(INTERNAL, convention)
    np.testing.assert_array_equal(raw, raw_labels(convention))
    np.testing.assert_array_equal(to_internal(raw, convention), INTERNAL)


def test_brats2021_enhancing_is_4_and_msd_oedema_is_1() -> None:
    et_only = np.full((2, 2, 2), 3, dtype=np.uint8)
    assert set(np.unique(from_internal(et_only, "brats2021"))) == {4}
    oedema = np.full((2, 2, 2), 2, dtype=np.uint8)
    assert set(np.unique(from_internal(oedema, "msd"))) == {1}


def test_to_internal_accepts_integral_floats_and_bools() -> None:
    raw = raw_labels("brats2021").astype(np.float32)
    np.testing.assert_array_equal(to_internal(raw, "brats2021"), INTERNAL)
    mask = np.array([True, False])
    np.testing.assert_array_equal(to_internal(mask, "brats2023"), [1, 0])


@pytest.mark.parametrize(
    ("convention", "values", "expected"),
    [
        ("brats2021", [0, 1, 3], "unexpected label values 3"),
        ("brats2023", [0, 2, 4], "unexpected label values 4"),
        ("msd", [0, 5], "unexpected label values 5"),
        ("nnunet", [0, 1, 300], "unexpected label values 300"),
        ("brats2021", [0, -1], "negative values -1"),
        ("brats2023", [0.0, 1.5], "fractional values 1.5"),
        ("msd", [0.0, np.nan], "non-finite"),
    ],
)
def test_to_internal_refuses_unexpected_values(
    convention: str, values: list[float], expected: str
) -> None:
    with pytest.raises(ValueError, match="seg_file.nii.gz") as info:
        to_internal(np.array(values), convention, source="seg_file.nii.gz")
    assert expected in str(info.value)


def test_from_internal_refuses_non_internal_values() -> None:
    with pytest.raises(ValueError, match="unexpected label values 4"):
        from_internal(np.array([0, 4]), "brats2021")


def test_unknown_convention_name() -> None:
    with pytest.raises(ValueError, match="unknown label convention 'brats2019'"):
        to_internal(INTERNAL, "brats2019")


def test_convention_must_cover_three_classes() -> None:
    with pytest.raises(ValueError, match="each of the internal classes"):
        LabelConvention.from_dict("partial", {1: 1, 2: 2})


def test_labels_to_regions_are_nested() -> None:
    regions = labels_to_regions(INTERNAL)
    assert regions.shape == (3, *INTERNAL.shape) and regions.dtype == np.bool_
    wt, tc, et = regions
    np.testing.assert_array_equal(wt, INTERNAL > 0)
    np.testing.assert_array_equal(tc, np.isin(INTERNAL, [1, 3]))
    np.testing.assert_array_equal(et, INTERNAL == 3)


def test_regions_round_trip() -> None:
    np.testing.assert_array_equal(regions_to_labels(labels_to_regions(INTERNAL)), INTERNAL)


def test_regions_to_labels_resolves_non_nested_input() -> None:
    # voxel 0: ET only -> 3; voxel 1: TC outside WT -> 1; voxel 2: WT only -> 2; voxel 3: none.
    regions = np.array(
        [[False, False, True, False], [False, True, False, False], [True, False, False, False]]
    )
    np.testing.assert_array_equal(regions_to_labels(regions), [3, 1, 2, 0])
    closure = labels_to_regions(regions_to_labels(regions))
    assert closure[0, :3].all() and closure[1, :2].all()  # nested again


def test_regions_to_labels_thresholds_probabilities() -> None:
    probs = np.array([[0.9, 0.9, 0.4], [0.6, 0.2, 0.1], [0.7, 0.1, 0.1]])
    np.testing.assert_array_equal(regions_to_labels(probs), [3, 2, 0])


def test_regions_shape_checked() -> None:
    with pytest.raises(ValueError, match=r"expected shape \(3, ...\)"):
        regions_to_labels(np.zeros((2, 4, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="unexpected values 4"):
        labels_to_regions(np.array([0, 4]))


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("T1", "t1"),
        ("t1n", "t1"),
        ("T1w", "t1"),
        ("T1ce", "t1ce"),
        ("t1c", "t1ce"),
        ("T1GD", "t1ce"),
        ("t1-gd", "t1ce"),
        ("T2", "t2"),
        ("T2w", "t2"),
        ("FLAIR", "flair"),
        ("t2f", "flair"),
        ("T2-FLAIR", "flair"),
    ],
)
def test_modality_spellings(name: str, modality: str) -> None:
    assert modality_from_name(name) == modality


def test_unknown_channel_name_names_file() -> None:
    with pytest.raises(ValueError, match=r"dataset.json: channel name 'CT'"):
        modality_from_name("CT", source="dataset.json")


def test_channel_modalities_duplicate() -> None:
    with pytest.raises(ValueError, match="both t1ce"):
        channel_modalities({"0": "T1ce", "1": "t1gd"}, source="dataset.json")


def test_nnunet_class_style_labels() -> None:
    conv = convention_from_labels(
        {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
        name="x",
        source="dataset.json",
    )
    assert dict(conv.mapping) == {0: 0, 1: 2, 2: 1, 3: 3}


def test_nnunet_class_style_brats_names() -> None:
    conv = convention_from_labels(
        {"background": 0, "NCR": 1, "ED": 2, "ET": 4}, name="x", source="dataset.json"
    )
    assert dict(conv.mapping) == dict(CONVENTIONS["brats2021"].mapping)


def test_nnunet_region_style_labels() -> None:
    # nnU-Net's Dataset137_BraTS2021: label files hold 1 ED, 2 NCR, 3 ET.
    conv = convention_from_labels(
        {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        name="x",
        source="dataset.json",
    )
    assert dict(conv.mapping) == {0: 0, 1: 2, 2: 1, 3: 3}


def test_msd_value_to_name_labels() -> None:
    conv = convention_from_labels(
        {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        name="msd",
        source="dataset.json",
        names_are_keys=False,
    )
    assert dict(conv.mapping) == {v: RAW_VALUE["msd"].index(v) for v in range(4)}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"background": 0, "liver": 1, "edema": 2, "enhancing": 3}, "'liver'"),
        ({"background": 0, "whole tumor": [1, 2], "tumor core": [2, 3], "et": [3]}, "nested"),
        ({"background": 0, "edema": 1, "enhancing": 2}, "each of the internal classes"),
    ],
)
def test_bad_label_dicts(labels: dict, expected: str) -> None:
    with pytest.raises(ValueError, match="dataset.json") as info:
        convention_from_labels(labels, name="x", source="dataset.json")
    assert expected in str(info.value)
