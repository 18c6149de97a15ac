"""The domain-randomised generator: determinism, label/target consistency, the head model,
normalisation, resolution, modality dropout and the tumour mix."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from transmed.data.generator import GeneratorConfig, GeneratorDataset, LabelMapPool, draw_sample
from transmed.data.generator.dataset import sample_rng
from transmed.data.generator.labelmaps import make_labelmap
from transmed.data.generator.sample import erase_tumour, fine_to_internal, fine_to_regions
from transmed.data.synth.tumour import sample_tumours_varied

SPACING = 4.0  # coarse maps keep these tests fast; the recipe uses 1.5 mm
PATCH = (24, 24, 24)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> LabelMapPool:
    pool = LabelMapPool(tmp_path_factory.mktemp("maps"), 3, seed=0, spacing=SPACING)
    pool.build(progress=False)
    return pool


def test_labelmap_has_brain_classes_and_distance(pool: LabelMapPool) -> None:
    lm = pool.get(0)
    assert lm.fine.dtype == np.uint8 and lm.fine.shape == lm.dist.shape
    brain = lm.fine > 0
    assert set(np.unique(lm.fine[brain])) >= {1, 2, 3}
    assert np.all(lm.dist[brain] == 0) and np.all(lm.dist[~brain] > 0)
    # padding leaves room for a head: the map's border is > 15 mm from the brain
    assert lm.dist[0].min() > 15 and lm.dist[:, :, -1].min() > 15


def test_pool_cache_round_trip(pool: LabelMapPool, tmp_path: Path) -> None:
    files = sorted(pool.folder.glob("*.npz"))
    assert len(files) == 3
    again = LabelMapPool(pool.folder, 3, seed=0, spacing=SPACING).get(1)
    fresh = make_labelmap(0, 1, SPACING)
    assert np.array_equal(again.fine, fresh.fine)
    np.testing.assert_allclose(again.dist, fresh.dist, atol=0.05)  # float16 on disk
    with pytest.raises(ValueError, match="outside the pool"):
        pool.get(3)


def test_sample_is_a_pure_function_of_the_rng(pool: LabelMapPool) -> None:
    cfg = GeneratorConfig(patch_size=PATCH)
    a = draw_sample(pool.get(0), sample_rng(0, 0, 5), cfg)
    b = draw_sample(pool.get(0), sample_rng(0, 0, 5), cfg)
    c = draw_sample(pool.get(0), sample_rng(0, 0, 6), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (4, *PATCH) and a[0].dtype == np.float32 and a[1].shape == PATCH


def test_dataset_does_not_depend_on_order(pool: LabelMapPool) -> None:
    ds = GeneratorDataset(pool, GeneratorConfig(patch_size=PATCH), length=4, seed=3)
    ds.set_epoch(2)
    late = ds[3]
    _ = [ds[i] for i in range(3)]
    again = ds[3]
    assert np.array_equal(late["image"].numpy(), again["image"].numpy())
    ds.set_epoch(3)
    assert not np.array_equal(ds[3]["image"].numpy(), late["image"].numpy())
    t = late["target"].numpy()
    assert t.shape == (3, *PATCH)
    assert np.all(t[2] <= t[1]) and np.all(t[1] <= t[0])  # ET ⊆ TC ⊆ WT


def test_region_and_label_mappings() -> None:
    fine = np.arange(10, dtype=np.uint8)
    wt, tc, et = fine_to_regions(fine)
    assert list(np.flatnonzero(wt)) == [4, 5, 6, 7]
    assert list(np.flatnonzero(tc)) == [4, 5, 6]
    assert list(np.flatnonzero(et)) == [6]
    assert list(fine_to_internal(fine)) == [0, 0, 0, 0, 1, 1, 3, 2, 0, 0]


@pytest.mark.parametrize("skull", [0.0, 1.0])
def test_whole_case_is_zscored_over_its_mask(pool: LabelMapPool, skull: float) -> None:
    cfg = GeneratorConfig(patch_size=PATCH, skull_prob=skull, dropout_prob=0.0)
    image, fine, info = draw_sample(pool.get(2), sample_rng(1, 0, 0), cfg, whole=True)
    assert info["skull_on"] is bool(skull)
    inside = image[1] != 0
    head_voxels, brain_voxels = int(inside.sum()), int((fine > 0).sum())
    if skull:  # the head (skull, scalp, fat) extends well beyond the brain
        assert head_voxels > 1.3 * brain_voxels
    else:  # stripped: the brain plus at most a few mm of extraction error
        assert brain_voxels <= head_voxels < 1.3 * brain_voxels
    for c in range(4):  # a whole case is z-scored exactly over its mask, as preprocessing does
        v = image[c][inside]
        assert abs(float(v.mean())) < 1e-3 and abs(float(v.std()) - 1.0) < 1e-3


def test_patch_normalisation_estimate_brackets_the_exact_one(pool: LabelMapPool) -> None:
    """Patches are z-scored with statistics estimated from the whole map; with the random
    contrast factor the patch's effective std must bracket the exact whole-case value."""
    from transmed.data.generator import sample as smp

    cfg = GeneratorConfig(patch_size=PATCH, dropout_prob=0.0)
    for i in range(3):
        p = smp._draw_params(sample_rng(6, 0, i), cfg)
        est_mean, est_std = smp._stats(pool.get(i), p)
        _, _, info = draw_sample(pool.get(i), sample_rng(6, 0, i), cfg, whole=True)
        exact_mean, exact_std = np.asarray(info["zscore_mean"]), np.asarray(info["zscore_std"])
        np.testing.assert_allclose(est_mean, exact_mean, rtol=0.1)
        ratio = est_std / exact_std
        assert np.all(ratio > 0.9) and np.all(ratio < 1.9), ratio


def test_modality_dropout_never_drops_t1ce(pool: LabelMapPool) -> None:
    cfg = GeneratorConfig(patch_size=PATCH, dropout_prob=1.0)
    seen = set()
    for i in range(12):
        image, _, info = draw_sample(pool.get(i % 3), sample_rng(2, 0, i), cfg)
        assert info["dropped"] and 1 not in info["dropped"]
        for c in info["dropped"]:
            assert not image[c].any()
        assert image[1].any()
        seen.add(tuple(info["dropped"]))
    assert len(seen) >= 3


def test_thick_slices_blur_along_their_axis(pool: LabelMapPool) -> None:
    """A thick-slice channel loses detail along its slice axis only."""
    cfg = GeneratorConfig(patch_size=(32, 32, 32), thick_slice_prob=1.0, lowres_prob=0.0,
                          slice_mm=(7.0, 7.5), noise_max=0.006, dropout_prob=0.0,
                          foreground_prob=0.0, rotation_deg=0.0)  # fmt: skip
    ratios = []
    for i in range(6):
        image, _, info = draw_sample(pool.get(i % 3), sample_rng(4, 0, i), cfg)
        # patch axes after the RAS flip keep their order, so the slice axis index holds
        c = 1
        axis = info["resolution"][c][1]
        grads = [np.abs(np.diff(image[c], axis=a)).mean() for a in range(3)]
        others = [g for a, g in enumerate(grads) if a != axis]
        ratios.append(grads[axis] / np.mean(others))
    assert np.median(ratios) < 0.8, ratios


def test_tumour_mix_is_varied() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-50, 50, (4000, 3))
    depth = rng.uniform(0, 40, 4000)
    cortical = rng.uniform(size=4000) < 0.3
    kinds, radii, no_oedema, counts = Counter(), [], 0, Counter()
    for _ in range(600):
        ts = sample_tumours_varied(rng, pts, depth, cortical, tumour_free_prob=0.05,
                                   multifocal_prob=0.15)  # fmt: skip
        counts[len(ts)] += 1
        for t in ts[:1]:
            kinds["nonenhancing" if not t.enhancing else
                  ("ring" if t.necrosis_ratio > 0 else "solid")] += 1  # fmt: skip
            radii.append(t.radius_mm)
            no_oedema += t.oedema_mm <= 0.5
    n = sum(kinds.values())
    assert 0.15 < kinds["nonenhancing"] / n < 0.35
    assert kinds["ring"] / n > 0.3 and kinds["solid"] / n > 0.1
    assert min(radii) < 4 and max(radii) > 25  # ≈ 0.3 ml to ≈ 65+ ml of core
    assert 0.08 < no_oedema / n < 0.25
    assert counts[0] > 10 and counts[2] + counts[3] > 40


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="skull_prob"):
        GeneratorConfig(skull_prob=1.5)
    with pytest.raises(ValueError, match="patch_size"):
        GeneratorConfig(patch_size=(8, 8, 8))


def test_erase_tumour_fills_from_the_nearest_normal_tissue() -> None:
    fine = np.full((9, 9, 9), 3, np.uint8)  # white matter
    fine[:, :, :3] = 2  # grey matter on one side
    fine[2:7, 2:7, 2:7] = 7  # oedema
    fine[3:6, 3:6, 3:6] = 6  # enhancing core
    fine[0] = 0  # outside the brain stays outside
    out = erase_tumour(fine)
    assert not ((out >= 4) & (out <= 7)).any()
    assert (out[0] == 0).all() and out[4, 4, 1] == 2 and out[4, 4, 7] == 3
    assert out[4, 4, 2] == 2 and out[4, 4, 6] == 3  # nearest side wins
    assert (out[fine < 4] == fine[fine < 4]).all()  # normal voxels untouched
    only_tumour = np.full((3, 3, 3), 6, np.uint8)
    assert (erase_tumour(only_tumour) == 6).all()  # nothing to fill from: unchanged


def test_tumour_free_patches_have_empty_targets(pool: LabelMapPool) -> None:
    cfg = GeneratorConfig(patch_size=PATCH, foreground_prob=1.0, tumour_free_prob=0.5)
    lm = next(pool.get(i) for i in range(len(pool)) if pool.get(i).tumour_voxels.size)
    erased = kept = 0
    for i in range(16):
        _, fine, info = draw_sample(lm, np.random.default_rng(i), cfg)
        has_tumour = bool(((fine >= 4) & (fine <= 7)).any())
        if info["tumour_erased"]:
            erased += 1
            assert not has_tumour and fine.any()  # brain kept, tumour gone
        else:
            kept += 1
            assert has_tumour  # centred on tumour
    assert erased >= 3 and kept >= 3
    # 0 (the default) draws nothing extra: earlier runs' samples are unchanged
    a = draw_sample(lm, np.random.default_rng(5), GeneratorConfig(patch_size=PATCH))
    assert a[2]["tumour_erased"] is False
    with pytest.raises(ValueError, match="tumour_free_prob"):
        GeneratorConfig(tumour_free_prob=-0.1)


def _lookalike_at_centre(fine: np.ndarray) -> bool:
    """A bright normal structure or the brain's edge within 2 voxels of the patch centre."""
    c = [n // 2 for n in fine.shape]
    w = fine[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2]
    return bool((w == 8).any() or ((w > 0).any() and (w == 0).any()))


def test_hard_negative_patches_centre_on_tumour_lookalikes(pool: LabelMapPool) -> None:
    lm = pool.get(0)
    bright, shell = lm.lookalike_voxels_half()
    half = lm.fine[::2, ::2, ::2]
    assert bright.size and shell.size
    assert (half.ravel()[bright] == 8).all() and (half.ravel()[shell] == 0).all()
    assert (lm.dist[::2, ::2, ::2].ravel()[shell] <= 4.0).all()
    hits = {}
    for prob in (0.0, 1.0):
        cfg = GeneratorConfig(patch_size=PATCH, foreground_prob=0.0, hard_negative_prob=prob)
        draws = [draw_sample(lm, np.random.default_rng(i), cfg) for i in range(30)]
        assert all(d[2]["hard_negative"] is (prob == 1.0) for d in draws)
        hits[prob] = np.mean([_lookalike_at_centre(d[1]) for d in draws])
    assert hits[1.0] >= 0.9 and hits[0.0] <= 0.6  # measured: 0.97 and 0.37
    # 0 (the default) draws nothing extra: earlier runs' samples are unchanged
    a = draw_sample(lm, np.random.default_rng(7), GeneratorConfig(patch_size=PATCH))
    cfg0 = GeneratorConfig(patch_size=PATCH, hard_negative_prob=0.0)
    b = draw_sample(lm, np.random.default_rng(7), cfg0)
    assert np.array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="hard_negative_prob"):
        GeneratorConfig(hard_negative_prob=1.5)


def test_dura_prob_sets_how_many_heads_have_enhancing_dura() -> None:
    """``dura_prob`` decides the heads with a "bright" meningeal layer: none at 0 (stage 1's
    heads, for a baseline with stage 1's recipe), every head at 1, and about 70 % by default
    (the value every stage since stage 2 drew)."""
    from transmed.data.generator import sample as smp

    def share(**kw: float) -> float:
        cfg = GeneratorConfig(patch_size=PATCH, **kw)
        draws = [smp._draw_params(sample_rng(9, 0, i), cfg)["layers"]["dura"] for i in range(200)]
        return float(np.mean(np.isfinite(draws)))

    assert share(dura_prob=0.0) == 0.0
    assert share(dura_prob=1.0) == 1.0
    assert 0.6 < share() < 0.8
    with pytest.raises(ValueError, match="dura_prob"):
        GeneratorConfig(dura_prob=1.2)


def test_random_contrasts_keep_the_defining_relations_when_asked() -> None:
    """``keep_relations``: on every random draw the capped parenchyma stays darker than its
    tumour compartment by the margin (without it, a good share of random T1ce draws renders CSF,
    cortex or WMH within that margin of enhancing tumour). The option consumes the same random
    numbers, changes no "real" modality and no uncapped class."""
    from transmed.data.generator.appearance import RANDOM_CAPS, draw_appearance

    def violations(keep: bool) -> int:
        bad = 0
        for s in range(300):
            means, _, kinds = draw_appearance(np.random.default_rng(s), 0.15, 1.0, keep)
            assert kinds == ["random"] * 4
            bad += sum(bool(means[c, m] > means[t, m] / margin)
                       for m, classes, t, margin in RANDOM_CAPS for c in classes)  # fmt: skip
        return bad

    assert violations(False) > 100
    assert violations(True) == 0
    capped = {(c, m) for m, classes, _, _ in RANDOM_CAPS for c in classes}
    for s in range(50):
        r0, r1 = np.random.default_rng(s), np.random.default_rng(s)
        a, sa, ka = draw_appearance(r0, 0.15, 0.5, False)
        b, sb, kb = draw_appearance(r1, 0.15, 0.5, True)
        assert ka == kb and np.array_equal(sa, sb)
        assert r0.uniform() == r1.uniform()  # the stream after the draw is unchanged
        for c in range(a.shape[0]):
            for m in range(4):
                if ka[m] == "real" or (c, m) not in capped:
                    assert a[c, m] == b[c, m]
                else:
                    assert 0.05 <= b[c, m] <= a[c, m] + 1e-6


def test_random_keeps_relations_reaches_the_sample_and_is_validated(pool: LabelMapPool) -> None:
    from transmed.training.generalist import generalist_generator

    cfg = generalist_generator((24, 24, 24), random_keeps_relations=True, random_contrast_prob=1.0)
    assert cfg.random_keeps_relations is True
    off = GeneratorConfig(patch_size=PATCH, random_contrast_prob=1.0, foreground_prob=1.0,
                          dropout_prob=0.0)  # fmt: skip
    on = GeneratorConfig(patch_size=PATCH, random_contrast_prob=1.0, foreground_prob=1.0,
                         dropout_prob=0.0, random_keeps_relations=True)  # fmt: skip
    a = draw_sample(pool.get(1), sample_rng(3, 0, 1), off)
    b = draw_sample(pool.get(1), sample_rng(3, 0, 1), on)
    assert np.array_equal(a[1], b[1])  # same anatomy and tumour
    assert not np.array_equal(a[0], b[0])  # darker capped parenchyma
    with pytest.raises(ValueError, match="random_keeps_relations"):
        GeneratorConfig(random_keeps_relations="yes")  # type: ignore[arg-type]


def test_whole_head_with_its_tumour_erased(pool: LabelMapPool) -> None:
    """``erase=True`` draws the same head and appearance with no tumour: labels all 0, the
    normal classes unchanged, the same draws in the info."""
    idx = next(i for i in range(len(pool)) if pool.get(i).tumour_voxels.size)
    cfg = GeneratorConfig(patch_size=PATCH, skull_prob=0.0)
    a, fa, ia = draw_sample(pool.get(idx), sample_rng(4, 0, idx), cfg, whole=True)
    b, fb, ib = draw_sample(pool.get(idx), sample_rng(4, 0, idx), cfg, whole=True, erase=True)
    tumour = (fa >= 4) & (fa <= 7)
    assert tumour.any() and not ((fb >= 4) & (fb <= 7)).any()
    assert np.array_equal(fa[~tumour], fb[~tumour])
    assert ib["tumour_erased"] is True and ia["tumour_erased"] is False
    assert ia["contrast_kind"] == ib["contrast_kind"] and ia["resolution"] == ib["resolution"]
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="erase=True needs whole=True"):
        draw_sample(pool.get(idx), sample_rng(4, 0, idx), cfg, erase=True)
