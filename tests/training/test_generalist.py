"""The generalist recipe end to end on a coarse grid: generator -> training -> checkpoint that
carries what predict needs (preprocessing, training-data profile), validation sets logged."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import transmed.training.generalist as g
from transmed.models.checkpoint import load_checkpoint


@pytest.fixture()
def coarse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(g, "GENERALIST_SPACING", 4.0)
    monkeypatch.setattr(g, "N_VAL_GENERATED", 1)
    monkeypatch.setattr(g, "N_VAL_COHORT", 1)


def test_generalist_run_writes_checkpoints_and_curves(coarse: None, tmp_path: Path) -> None:
    cfg = g.generalist_config(epochs=2, iters_per_epoch=2, batch_size=1, patch_size=(32, 32, 32),
                              model_kwargs={"features": [8, 16, 16, 16], "attention_head_dim": 8,
                                            "patch_size": 32},
                              val_every=1)  # fmt: skip
    out = tmp_path / "gen"
    result = g.train_generalist(out, cfg, pool_size=2, progress=False)
    assert result.epochs_run == 2
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2
    for key in ("val_dice_WT", "cohort_dice_ET", "cohort_dice_mean"):
        assert 0.0 <= float(rows[-1][key]) <= 1.0
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    pre = ckpt["preprocess_config"]
    assert pre["target_spacing"] == [1.5, 1.5, 1.5] or pre["target_spacing"] == [4.0] * 3
    assert pre["reference"] == "t1ce" and pre["brain_extraction"] == "auto"
    assert ckpt["training_data"]["modality_dropout"] is True
    assert ckpt["data_profile"]["skull_stripped_fraction"] == pytest.approx(0.5)
    assert len(list((out / "labelmaps").glob("*.npz"))) == 2 + 1  # pool + validation map
    # the run resumes from its own files (nothing left to do after the last epoch)
    again = g.train_generalist(out, resume=True, progress=False)
    assert again.epochs_run == 2
    with pytest.raises(ValueError, match="already holds a run"):
        g.train_generalist(out, cfg, pool_size=2, progress=False)
    assert all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())


def test_generalist_init_from_starts_from_the_given_weights(coarse: None, tmp_path: Path) -> None:
    kwargs = {"features": [8, 16, 16, 16], "attention_head_dim": 8, "patch_size": 32}
    first = tmp_path / "first"
    cfg = g.generalist_config(epochs=1, iters_per_epoch=2, batch_size=1, patch_size=(32, 32, 32),
                              model_kwargs=kwargs, val_every=1)  # fmt: skip
    g.train_generalist(first, cfg, pool_size=2, progress=False)
    init = load_checkpoint(first / "checkpoints" / "final.pt")["model"]
    # lr ~ 0: a run initialised from the first stays at its weights; from scratch it would not
    cfg2 = g.generalist_config(epochs=1, iters_per_epoch=1, batch_size=1, patch_size=(32, 32, 32),
                               model_kwargs=kwargs, val_every=1, lr=1e-12, seed=1,
                               init_from=str(first))  # fmt: skip
    second = tmp_path / "second"
    g.train_generalist(second, cfg2, pool_size=2, progress=False)
    final = load_checkpoint(second / "checkpoints" / "final.pt")["model"]
    floats = [k for k, v in init.items() if v.is_floating_point()]
    assert floats
    for k in floats:
        assert torch.allclose(final[k].float(), init[k].float(), atol=1e-5), k


def test_train_preset_takes_the_config_file_and_options(tmp_path: Path, monkeypatch) -> None:
    """`--config` and `--model` were silently dropped with `--preset generalist`: the recipe,
    then the file's keys, then the options given."""
    import json

    from typer.testing import CliRunner

    from transmed.cli import app

    seen = {}

    def fake_train(out, config, resume=False, device=None, generator=None):
        seen["config"], seen["generator"] = config, generator  # what would be trained
        raise SystemExit(0)

    monkeypatch.setattr(g, "train_generalist", fake_train)
    cfg = tmp_path / "more.json"
    cfg.write_text(json.dumps({"lr": 0.001, "epochs": 3,
                               "generator": {"tumour_free_prob": 0.3, "slice_mm": [3, 6]}}))
    res = CliRunner().invoke(app, ["train", "--preset", "generalist", "--config", str(cfg),
                                   "--epochs", "5", "--model", "unet", "--out",
                                   str(tmp_path / "run")])  # fmt: skip
    assert res.exit_code == 0, res.output
    c = seen["config"]
    assert (c.lr, c.epochs, c.model, c.iters_per_epoch) == (0.001, 5, "unet", 250)
    gen = seen["generator"]
    assert (gen.tumour_free_prob, gen.slice_mm, gen.patch_size) == (0.3, (3, 6), (64, 64, 64))
    # the recipe's generator without a "generator" mapping
    cfg.write_text(json.dumps({"lr": 0.001}))
    res = CliRunner().invoke(app, ["train", "--preset", "generalist", "--config", str(cfg),
                                   "--out", str(tmp_path / "run3")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen["generator"].tumour_free_prob == g.GENERATOR_RECIPE["tumour_free_prob"] > 0
    cfg.write_text(json.dumps({"generator": {"tumour_free": 0.3}}))
    res = CliRunner().invoke(app, ["train", "--preset", "generalist", "--config", str(cfg),
                                   "--out", str(tmp_path / "run4")])  # fmt: skip
    assert res.exit_code != 0 and "tumour_free" in res.output
    with pytest.raises(ValueError, match="generator: expected a mapping"):
        g.generalist_recipe({"generator": [0.3]})
    cfg.write_text(json.dumps({"lr": -1}))
    res = CliRunner().invoke(app, ["train", "--preset", "generalist", "--config", str(cfg),
                                   "--out", str(tmp_path / "run2")])  # fmt: skip
    assert res.exit_code != 0 and "lr" in res.output


def test_recipe_model_kwargs_are_merged_not_replaced() -> None:
    # adding one constructor argument keeps the recipe's patch-derived relative-bias reach
    c = g.generalist_config(model_kwargs={"axial_layer_scale": 1e-5})
    assert c.model_kwargs == {"patch_size": 64, "axial_layer_scale": 1e-5}
    c = g.generalist_config(patch_size=(32, 32, 32), model_kwargs={"patch_size": 48})
    assert c.model_kwargs["patch_size"] == 48  # the given keys win
    assert g.generalist_config().model_kwargs == {"patch_size": 64}
    from transmed.models import create_model

    model = create_model(c.model, **g.generalist_config(
        model_kwargs={"axial_layer_scale": 1e-5, "features": (8, 16, 16, 16),
                      "attention_head_dim": 8}).model_kwargs)  # fmt: skip
    gains = [p for n, p in model.named_parameters() if n.endswith("gammas")]
    assert len(gains) == 2 and all(torch.all(p == 1e-5) for p in gains)
