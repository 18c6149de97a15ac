"""Synthetic BraTS-like cohort: determinism, layout, sidecar, label anatomy, contrasts, and that a
single intensity threshold cannot solve it. Small grids (48 x 48 x 40, 5 mm voxels)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from transmed.cli import app
from transmed.data.synth import SynthConfig, generate_case, generate_cohort, is_complete
from transmed.data.synth.anatomy import output_grid
from transmed.data.synth.deformation import MassEffect, apply_mass_effect
from transmed.data.synth.tumour import geodesic_distance, sample_tumours

SHAPE = (48, 48, 40)
MODALITIES = ("t1", "t1ce", "t2", "flair")
# Cases of seed 0 at SHAPE, kept to those whose tumour covers >= 300 voxels (checked below).
TUMOUR_CASES = (0, 1, 3, 5, 6, 7)


@pytest.fixture(scope="module")
def cases() -> dict[int, object]:
    return {i: generate_case(0, i, SHAPE) for i in TUMOUR_CASES}


def best_threshold_dice(image: np.ndarray, region: np.ndarray, brain: np.ndarray) -> float:
    """Best Dice of ``image > t`` or ``image < t`` for ``region`` over every threshold ``t``.

    Exact: sorts the brain voxels once and evaluates every cut between distinct values.
    """
    values = image[brain].astype(np.float64)
    member = region[brain].astype(np.int64)
    order = np.argsort(values, kind="stable")
    values, member = values[order], member[order]
    n, total = len(values), int(member.sum())
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(values)) + 1, [n]])
    below = np.concatenate([[0], np.cumsum(member)])[cuts]  # region voxels under each cut
    dice_low = 2 * below / (cuts + total)
    dice_high = 2 * (total - below) / ((n - cuts) + total)
    return float(max(dice_low.max(), dice_high.max()))


def test_best_threshold_dice_is_exact_on_a_separable_toy() -> None:
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    brain = np.ones_like(image, dtype=bool)
    assert best_threshold_dice(image, image >= 70, brain) == pytest.approx(1.0)
    assert best_threshold_dice(image, image < 20, brain) == pytest.approx(1.0)
    checker = (np.indices(image.shape).sum(axis=0) % 2).astype(bool)
    assert best_threshold_dice(image, checker, brain) < 0.7


def test_same_seed_same_arrays_different_seed_different() -> None:
    a, b = generate_case(5, 1, SHAPE), generate_case(5, 1, SHAPE)
    for m in MODALITIES:
        assert np.array_equal(a.images[m], b.images[m])
    assert np.array_equal(a.seg, b.seg)
    assert a.params == b.params
    other_seed, other_index = generate_case(6, 1, SHAPE), generate_case(5, 2, SHAPE)
    assert not np.array_equal(a.images["t1"], other_seed.images["t1"])
    assert not np.array_equal(a.images["t1"], other_index.images["t1"])


def test_cohort_layout_dtypes_affine_and_sidecar(tmp_path: Path) -> None:
    folders = generate_cohort(tmp_path / "c", 2, seed=0, shape=SHAPE, workers=1, progress=False)
    assert [f.name for f in folders] == ["BraTS2021_00000", "BraTS2021_00001"]
    reference = generate_case(0, 1, SHAPE)  # case 1 made alone equals case 1 of the cohort
    folder = folders[1]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [f"BraTS2021_00001_{k}.nii.gz" for k in (*MODALITIES, "seg")] + ["generation.json"]
    )
    brain = reference.images["t1"] > 0
    for kind in (*MODALITIES, "seg"):
        img = nib.load(folder / f"BraTS2021_00001_{kind}.nii.gz")
        data = np.asanyarray(img.dataobj)
        assert data.shape == SHAPE
        assert data.dtype == (np.uint8 if kind == "seg" else np.int16)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # BraTS 2021 axis directions
        assert np.allclose(np.abs(np.diag(img.affine)[:3]), (5.0, 5.0, 3.875))
        expected = reference.seg if kind == "seg" else reference.images[kind]
        assert np.array_equal(data, expected)
        if kind != "seg":
            assert np.array_equal(data > 0, brain)  # skull-stripped, same support everywhere
    assert not reference.seg[~brain].any()
    # the brain is whole and inside the grid: no brain voxel on the grid's faces
    assert 5_000 < brain.sum() < 20_000  # ~1.2-1.5 L at 97 mm^3 per voxel
    for axis in range(3):
        assert not np.take(brain, [0, SHAPE[axis] - 1], axis=axis).any()

    meta = json.loads((folder / "generation.json").read_text())
    assert meta["seed"] == 0 and meta["index"] == 1 and meta["shape"] == list(SHAPE)
    assert meta["spacing_mm"] == pytest.approx([5.0, 5.0, 3.875])
    assert set(meta["deformation"]) >= {
        "rotation_deg",
        "scale",
        "translation_mm",
        "elastic_amplitude_mm",
        "elastic_smoothness_mm",
    }
    assert meta["tumour_count"] == len(meta["tumours"]) >= 1
    assert {"centre_mm", "radius_mm", "oedema_mm"} <= set(meta["tumours"][0])
    contrast = meta["contrast"]
    assert set(contrast["class_means_relative_to_wm"]["csf"]) == set(MODALITIES)
    assert 0 < contrast["noise_level"] < 0.1
    assert set(contrast["bias_strength"]) == set(MODALITIES)
    seg = reference.seg
    assert meta["label_volumes_voxels"] == {
        "NCR": int((seg == 1).sum()),
        "ED": int((seg == 2).sum()),
        "ET": int((seg == 4).sum()),
        "TC": int(np.isin(seg, (1, 4)).sum()),
        "WT": int((seg > 0).sum()),
    }
    assert is_complete(folder)


def test_existing_case_folders_are_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "c"
    generate_cohort(out, 1, seed=0, shape=SHAPE, workers=1, progress=False)
    t1 = out / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz"
    stamp = t1.stat().st_mtime_ns
    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_cohort(out, 1, seed=1, shape=SHAPE, workers=1, progress=False)
    folders = generate_cohort(
        out, 2, seed=0, shape=SHAPE, workers=1, progress=False, skip_existing=True
    )
    assert t1.stat().st_mtime_ns == stamp  # kept, not regenerated
    assert all(is_complete(f) for f in folders)
    (folders[1] / "generation.json").unlink()  # incomplete: never silently reused
    with pytest.raises(ValueError, match="BraTS2021_00001"):
        generate_cohort(out, 2, seed=0, shape=SHAPE, workers=1, progress=False, skip_existing=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cases": 0}, "n_cases"),
        ({"shape": (8, 48, 40)}, "shape"),
        ({"shape": (48, 600, 40)}, "shape"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"n_cases": 1, "seed": 0, "shape": SHAPE, "workers": 1, "progress": False} | kwargs
    with pytest.raises(ValueError, match=match):
        generate_cohort(tmp_path / "c", **args)
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_bad_case_index_is_refused() -> None:
    with pytest.raises(ValueError, match="index"):
        generate_case(0, 100_000, SHAPE)


def test_labels_form_plausible_tumours(cases: dict) -> None:
    for i, case in cases.items():
        seg = case.seg
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        wt, tc = seg > 0, np.isin(seg, (1, 4))
        assert wt.sum() >= 300, f"case {i}: pick cases with a real tumour"
        # depth inside the whole tumour: necrosis deepest, then the rim, then the oedema
        depth = ndi.distance_transform_edt(wt, sampling=case.params["spacing_mm"])
        d_ed = depth[seg == 2].mean()
        assert depth[tc].mean() > d_ed, f"case {i}: core not inside the oedema"
        if (seg == 1).sum() >= 10 and (seg == 4).sum() >= 10:
            assert depth[seg == 1].mean() > depth[seg == 4].mean(), f"case {i}"
            # ET touches NCR (a rim around a core, not a separate blob)
            assert (ndi.binary_dilation(seg == 1) & (seg == 4)).any(), f"case {i}"
        # oedema surrounds the core: most voxels just outside the core are oedema
        shell = ndi.binary_dilation(tc) & ~tc
        assert (seg[shell] == 2).mean() > 0.6, f"case {i}"
        assert (case.tissue[wt] == 0).all()


def test_oedema_distance_runs_faster_along_white_matter() -> None:
    speed = np.full((41, 41, 5), 0.25, dtype=np.float32)  # grey-matter-like
    speed[:, 18:23, :] = 1.0  # a white-matter tract along axis 0
    source = np.zeros(speed.shape, dtype=bool)
    source[20, 20, 2] = True
    dist = geodesic_distance(speed, source, step_mm=1.0, limit_mm=200.0)
    along, across = dist[40, 20, 2], dist[20, 40, 2]
    assert along == pytest.approx(20.0, abs=0.5)
    assert across > 3 * along  # 2 mm of WM, then 18 mm at a quarter of the speed


def test_mass_effect_pushes_anatomy_away_from_the_tumour() -> None:
    grid = output_grid(SHAPE)
    identity = grid.coarse_world()  # sampling field that shows the template undeformed
    centre = identity[20, 20, 18]
    pushed = apply_mass_effect(identity, grid, [MassEffect(tuple(centre), 0.4, 15.0)])
    near = np.linalg.norm(identity - centre, axis=-1)
    ring = (near > 5) & (near < 20)
    # points around the tumour now show template points closer to its centre: pushed outwards
    assert (np.linalg.norm(pushed - centre, axis=-1)[ring] < near[ring] - 0.5).all()
    far = near > 80
    assert np.allclose(pushed[far], identity[far], atol=0.05)


def test_tumour_free_and_multifocal_rates() -> None:
    rng = np.random.default_rng(0)
    candidates = rng.uniform(-40, 40, (500, 3))
    depth = rng.uniform(5, 40, 500)
    counts = [
        len(sample_tumours(rng, candidates, depth, tumour_free_prob=0.07, multifocal_prob=0.12))
        for _ in range(2000)
    ]
    counts = np.asarray(counts)
    assert 0.05 < (counts == 0).mean() < 0.09
    assert 0.10 < (counts >= 2).mean() < 0.14
    assert counts.max() <= 3


def test_tumour_free_cases_can_be_forced() -> None:
    free = generate_case(0, 0, SHAPE, SynthConfig(tumour_free_prob=1.0, multifocal_prob=0.0))
    assert not free.seg.any() and free.params["tumour_count"] == 0
    assert free.params["label_volumes_voxels"]["WT"] == 0
    assert (free.images["flair"] > 0).sum() > 5_000
    always = SynthConfig(tumour_free_prob=0.0, multifocal_prob=1.0)
    for i in range(2):
        assert generate_case(0, i, SHAPE, always).params["tumour_count"] >= 2
    with pytest.raises(ValueError, match="tumour_free_prob"):
        SynthConfig(tumour_free_prob=1.5)


def test_contrast_ordering_of_tissue_means(cases: dict) -> None:
    for i, case in cases.items():
        tis, seg = case.tissue, case.seg

        def mean(m: str, where: np.ndarray, case=case) -> float:
            return float(case.images[m][where].mean())

        csf, gm, wm = tis == 1, tis == 2, tis == 3
        assert mean("t1", wm) > mean("t1", gm) > mean("t1", csf), f"case {i}"
        assert mean("t2", csf) > mean("t2", gm) > mean("t2", wm), f"case {i}"
        assert mean("flair", csf) < mean("flair", gm), f"case {i}"
        assert mean("flair", seg == 2) > mean("flair", wm), f"case {i}: oedema on FLAIR"
        assert mean("t2", seg == 2) > mean("t2", wm), f"case {i}: oedema on T2"
        if (seg == 4).sum() >= 10:  # ET enhances: brighter on T1ce than on T1, relative to WM
            assert mean("t1ce", seg == 4) / mean("t1ce", wm) > 1.15 * (
                mean("t1", seg == 4) / mean("t1", wm)
            ), f"case {i}"
        if (seg == 1).sum() >= 10:  # necrosis dark on T1ce, bright on T2
            assert mean("t1ce", seg == 1) < mean("t1ce", wm), f"case {i}"
            assert mean("t2", seg == 1) > mean("t2", wm), f"case {i}"


def test_one_threshold_does_not_solve_any_region(cases: dict) -> None:
    """No single intensity threshold segments a region well.

    Measured over the 51 tumour cases (WT >= 300 voxels) of seeds 1-3, indices 0-23, at this
    size: best-threshold Dice mean / 90th percentile / max = 0.50 / 0.67 / 0.80 for WT on
    FLAIR, 0.26 / 0.39 / 0.63 WT on T2, 0.31 / 0.50 / 0.69 TC on T1ce, 0.32 / 0.63 / 0.70 ET on
    T1ce. Bounds: mean < 0.6 and every case < 0.8. A generator where a region is its own
    intensity band (no overlap with normal tissue) scores close to 1 and fails both.
    """
    scores = {"WT/flair": [], "WT/t2": [], "TC/t1ce": [], "ET/t1ce": []}
    for case in cases.values():
        seg, brain = case.seg, case.images["t1"] > 0
        regions = {"WT": seg > 0, "TC": np.isin(seg, (1, 4)), "ET": seg == 4}
        for key in scores:
            region, modality = key.split("/")
            if regions[region].sum() >= 10:
                scores[key].append(
                    best_threshold_dice(case.images[modality], regions[region], brain)
                )
    for key, values in scores.items():
        assert len(values) >= 4, key
        assert np.mean(values) < 0.6 and max(values) < 0.8, (key, values)
    # ... yet the regions stay visible: ET is the brightest class on T1ce (even with 5 mm
    # partial volume) and oedema is FLAIR-bright on average
    for case in cases.values():
        seg, t1ce, flair = case.seg, case.images["t1ce"], case.images["flair"]
        wm = case.tissue == 3
        if (seg == 4).sum() >= 10:
            et = t1ce[seg == 4].mean()
            assert et > 1.05 * t1ce[wm].mean() and et > t1ce[seg == 2].mean()
            assert (seg == 1).sum() < 10 or et > t1ce[seg == 1].mean()
        assert flair[seg == 2].mean() > 1.1 * flair[wm].mean()


def test_cli_synth(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    args = [
        "data",
        "synth",
        "--out",
        str(out),
        "--cases",
        "1",
        "--seed",
        "2",
        "--shape",
        *map(str, SHAPE),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert str(out.resolve()) in result.output and "1 synthetic case" in result.output
    assert is_complete(out / "BraTS2021_00000")
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "refusing" in again.output
    bad = CliRunner().invoke(app, [*args[:-3], "8", "48", "40"])
    assert bad.exit_code != 0


@pytest.mark.slow
def test_parallel_cohort_equals_cases_made_alone(tmp_path: Path) -> None:
    folders = generate_cohort(tmp_path / "c", 2, seed=3, shape=SHAPE, workers=2, progress=False)
    for i, folder in enumerate(folders):
        alone = generate_case(3, i, SHAPE)
        seg = np.asanyarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj)
        flair = np.asanyarray(nib.load(folder / f"{folder.name}_flair.nii.gz").dataobj)
        assert np.array_equal(seg, alone.seg) and np.array_equal(flair, alone.images["flair"])
