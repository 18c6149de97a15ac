"""Cross-validation by patient: grouped folds, patient rules, splits checks, ``transmed cv``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from transmed.training.config import ConfigError
from transmed.training.splits import check_splits, load_splits, make_folds, patient_groups

# Two or three time points for some patients, one for others (BraTS 2023 GLI naming).
BRATS23 = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(1, 13) for t in range(1 + p % 3)]


def _fold_of(folds: list[dict[str, list[str]]]) -> dict[str, int]:
    return {c: k for k, f in enumerate(folds) for c in f["val"]}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_brats2023_time_points_never_fall_into_different_folds(seed: int, k: int) -> None:
    folds = make_folds(BRATS23, k, seed=seed)
    fold_of = _fold_of(folds)
    assert sorted(fold_of) == sorted(BRATS23)  # every case validated exactly once
    assert sum(len(f["val"]) for f in folds) == len(BRATS23)
    assert fold_of["BraTS-GLI-00001-000"] == fold_of["BraTS-GLI-00001-001"]
    for patient in {c[:-4] for c in BRATS23}:
        assert len({fold_of[c] for c in BRATS23 if c.startswith(patient + "-")}) == 1, patient
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == sorted(BRATS23)
    sizes = [len(f["val"]) for f in folds]
    assert max(sizes) - min(sizes) <= 3  # balanced up to one patient's three scans


def test_one_case_per_patient_keeps_the_former_round_robin() -> None:
    """Existing splits.json files of BraTS 2021 / MSD datasets stay what they were."""
    ids = [f"BraTS2021_{i:05d}" for i in range(11)]
    order = [ids[i] for i in np.random.default_rng(3).permutation(len(ids))]
    former = [{"train": sorted(set(ids) - set(order[i::4])), "val": sorted(order[i::4])}
              for i in range(4)]  # fmt: skip
    assert make_folds(ids, 4, seed=3) == former
    with pytest.raises(ValueError, match="patients"):
        make_folds(["BraTS-GLI-00001-000", "BraTS-GLI-00001-001", "BraTS-GLI-00002-000"], 3)


def test_patient_rules_regex_and_mapping_files(tmp_path: Path) -> None:
    ids = ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1"]
    assert patient_groups(ids) == {c: c for c in ids}  # not BraTS 2023: each case alone
    groups = patient_groups(ids, regex=r"^(sub-\d+)_")
    assert groups == {"sub-01_ses-1": "sub-01", "sub-01_ses-2": "sub-01", "sub-02_ses-1": "sub-02"}
    folds = make_folds(ids, 2, seed=0, groups=groups)
    assert sorted(map(sorted, (f["val"] for f in folds))) == [["sub-01_ses-1", "sub-01_ses-2"],
                                                              ["sub-02_ses-1"]]  # fmt: skip
    with pytest.raises(ConfigError, match=r"does not match.*1 case\(s\): sub-02_ses-1"):
        patient_groups(ids, regex=r"^(sub-01)_")
    with pytest.raises(ConfigError, match="invalid"):
        patient_groups(ids, regex="(")
    as_json = tmp_path / "patients.json"
    as_json.write_text(json.dumps({"sub-01_ses-1": "A", "sub-01_ses-2": "A", "sub-02_ses-1": "B"}))
    as_csv = tmp_path / "patients.csv"
    as_csv.write_text("case,patient\nsub-01_ses-1,A\nsub-01_ses-2,A\nsub-02_ses-1,B\n")
    expected = {"sub-01_ses-1": "A", "sub-01_ses-2": "A", "sub-02_ses-1": "B"}
    assert patient_groups(ids, mapping=as_json) == patient_groups(ids, mapping=as_csv) == expected
    as_csv.write_text("case,patient\nsub-01_ses-1,A\n")
    with pytest.raises(ConfigError, match=r"patients\.csv: no patient for 2 case\(s\): "
                                          r"sub-01_ses-2, sub-02_ses-1"):
        patient_groups(ids, mapping=as_csv)
    with pytest.raises(ConfigError, match="not both"):
        patient_groups(ids, regex="x", mapping=as_json)


IDS = ["BraTS-GLI-00001-000", "BraTS-GLI-00001-001", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"]
A0, A1, B, C = IDS


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ([{"train": [A0, A1, B], "val": [C]}, {"train": [C], "val": [A0, A1, B, "ghost"]}],
         r"fold 1 names 1 case\(s\) the data do not have: ghost"),
        ([{"train": [A0, A1, B, C], "val": [C]}, {"train": [C], "val": [A0, A1, B]}],
         r"fold 0 has 1 case\(s\) in both train and val: " + C),
        ([{"train": [A0, A1, B], "val": [C]}, {"train": [], "val": [A0, A1, B, C]}],
         r"validated in more than one fold: " + C + r" in folds \[0, 1\]"),
        ([{"train": [A0, A1, C], "val": [B]}, {"train": [B], "val": [A0, A1]}],
         r"1 case\(s\) never validated: " + C),
        ([{"train": [A1, B, C], "val": [A0]}, {"train": [A0], "val": [A1, B, C]}],
         r"fold 0 trains and validates on the same patient "
         r"\(1 patient\(s\); cases BraTS-GLI-00001-000, BraTS-GLI-00001-001\)"),
        ({"train": IDS, "val": []}, r"expected a non-empty list"),
    ],
    ids=["unknown", "overlap", "validated-twice", "never-validated", "patient-leak", "shape"],
)
def test_bad_splits_files_are_refused_naming_file_and_cases(
    splits: object, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "my_splits.json"
    path.write_text(json.dumps(splits))
    with pytest.raises(ConfigError, match=r"my_splits\.json: .*" + message):
        load_splits(path, IDS)


def test_good_splits_file_is_accepted(tmp_path: Path) -> None:
    good = [{"train": [A0, A1, B], "val": [C]}, {"train": [C], "val": [A0, A1, B]}]
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(good))
    assert load_splits(path, IDS) == good
    # a case may be left out of a fold's train set (nnU-Net allows it), never out of all vals
    assert check_splits([{"train": [C], "val": [A0, A1, B]}, {"train": [], "val": [C]}], IDS)
    # each case its own patient: the time points may then be split (the user said so)
    leak = [{"train": [A1, B, C], "val": [A0]}, {"train": [A0], "val": [A1, B, C]}]
    assert check_splits(leak, IDS, {c: c for c in IDS}) == leak


def test_cv_command_checks_splits_and_patient_options_before_training(
    tiny_brats: Path, tmp_path: Path
) -> None:
    from transmed.cli import app

    runner = CliRunner()
    out = tmp_path / "cv"
    ids = sorted(p.name for p in tiny_brats.iterdir() if p.is_dir())
    bad = tmp_path / "overlap.json"
    bad.write_text(json.dumps([{"train": ids, "val": ids[:2]}, {"train": ids[:2], "val": ids[2:]}]))
    base = ["cv", "--data", str(tiny_brats), "--model", "unet", "--out", str(out)]
    result = runner.invoke(app, [*base, "--splits", str(bad)])
    assert result.exit_code == 2, result.output
    assert "overlap.json" in result.output and "in both train and val" in result.output
    assert ids[0] in result.output
    result = runner.invoke(app, [*base, "--patient-regex", r"^(BraTS2021_0000[01])"])
    assert result.exit_code == 2, result.output
    assert "does not match" in result.output and ids[2] in result.output
    assert not (out / "splits.json").exists() and not (out / "fold_0").exists()
