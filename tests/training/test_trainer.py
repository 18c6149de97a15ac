"""Training runs end to end: checkpoints, metrics, exact resume after a kill, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from transmed.cli import app
from transmed.training.checkpoint import CheckpointError, load_checkpoint, load_model
from transmed.training.config import ConfigError, TrainConfig, load_config
from transmed.training.run import make_folds, train
from transmed.training.schedule import lr_factor

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "transmed.cli", *args],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_tiny_run_writes_checkpoints_and_metrics(
    tiny_brats: Path, tmp_path: Path, tiny_config: dict
) -> None:
    out = tmp_path / "run"
    result = train(tiny_brats, out, TrainConfig(**tiny_config), progress=False)
    for name in ("latest", "best", "final"):
        assert (out / "checkpoints" / f"{name}.pt").is_file()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(0.0 <= float(r["val_dice_mean"]) <= 1.0 for r in rows)
    assert result.best_dice == max(float(r["val_dice_mean"]) for r in rows)
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 3
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    assert ckpt["model_config"]["name"] == "unet" and ckpt["epoch"] == 2
    model = load_model(out / "checkpoints" / "best.pt")
    assert model(torch.randn(1, 4, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    # the run refuses to be overwritten
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_brats, out, TrainConfig(**tiny_config), progress=False)


def test_resume_after_kill_gives_identical_weights(
    tiny_brats: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    common = ["--data", str(tiny_brats), "--config", str(tiny_config_file),
              "--epochs", "4", "--iters-per-epoch", "4"]  # fmt: skip
    full = _cli("train", *common, "--out", str(tmp_path / "full"))
    assert full.wait(timeout=300) == 0, full.stdout.read()

    killed_dir = tmp_path / "killed"
    proc = _cli("train", *common, "--out", str(killed_dir))
    latest = killed_dir / "checkpoints" / "latest.pt"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-training: after epoch 0's checkpoint
    proc.wait()
    assert not (killed_dir / "checkpoints" / "final.pt").exists(), "run ended before the kill"
    resumed = _cli("train", "--out", str(killed_dir), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "final.pt")
    b = load_checkpoint(killed_dir / "checkpoints" / "final.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = list(csv.DictReader(open(killed_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]


def test_nonfinite_loss_is_skipped_then_stops(
    tiny_brats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_config: dict
) -> None:
    from transmed.training import trainer as trainer_mod

    calls = {"n": 0}
    real = trainer_mod.build_loss

    def flaky(config: TrainConfig) -> torch.nn.Module:
        inner = real(config)

        def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            value = inner(out, y)
            return value * float("nan") if calls["n"] == 2 else value

        return loss  # type: ignore[return-value]

    monkeypatch.setattr(trainer_mod, "build_loss", flaky)
    cfg = TrainConfig(**{**tiny_config, "epochs": 2})
    result = train(tiny_brats, tmp_path / "flaky", cfg, progress=False)
    assert result.nonfinite_steps == 1
    best = load_checkpoint(tmp_path / "flaky" / "checkpoints" / "best.pt")
    assert all(torch.isfinite(v).all() for v in best["model"].values())

    def always_nan(config: TrainConfig):
        return lambda out, y: out.sum() * float("nan")

    monkeypatch.setattr(trainer_mod, "build_loss", always_nan)
    cfg = TrainConfig(**{**tiny_config, "max_nonfinite": 3, "iters_per_epoch": 5})
    with pytest.raises(trainer_mod.TrainingError, match="3 consecutive non-finite"):
        train(tiny_brats, tmp_path / "nan", cfg, progress=False)
    assert not (tmp_path / "nan" / "checkpoints" / "best.pt").exists()


def test_config_validation_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochs": 3, "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(bad)
    with pytest.raises(ConfigError, match="epochs"):
        load_config(None, epochs=0)
    with pytest.raises(ConfigError, match="unknown model"):
        load_config(None, model="resnet9000")
    with pytest.raises(ConfigError, match="augment"):
        load_config(None, augment={"flip_probability": 0.5})
    yml = tmp_path / "ok.yaml"
    yml.write_text("epochs: 7\npatch_size: [64, 64, 64]\n")
    assert load_config(yml).patch_size == (64, 64, 64)


def test_cli_user_errors_exit_cleanly(tiny_brats: Path, tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "not found" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert r.exit_code == 2 and "nothing to resume" in r.output
    r = runner.invoke(app, ["train", "--data", str(tiny_brats), "--model", "nonexistent",
                            "--out", str(tmp_path / "o2")])  # fmt: skip
    assert r.exit_code == 2 and "unknown model" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["train", "--data", str(empty), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 2 and "Error" in r.output


def test_corrupt_or_foreign_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a TransMed checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_schedule_and_folds() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10) < 0.05
    folds = make_folds([f"c{i}" for i in range(11)], 5, seed=1)
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == sorted(f"c{i}" for i in range(11))  # each case validated once
    assert all(not set(f["train"]) & set(f["val"]) for f in folds)
    with pytest.raises(ValueError, match="folds"):
        make_folds(["a", "b"], 5)


@pytest.mark.slow
def test_ddp_gloo_two_processes(tiny_brats: Path, tiny_config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "transmed.cli", "train", "--data", str(tiny_brats), "--config",
           str(tiny_config_file), "--epochs", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # written once, by rank 0
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])


def test_run_ends_with_evaluation_and_latency(tiny_brats: Path, tmp_path: Path, tiny_config: dict):
    out = tmp_path / "run"
    train(tiny_brats, out, TrainConfig(**{**tiny_config, "epochs": 1}), progress=False)
    evaluation = json.loads((out / "evaluation.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert evaluation["cases"] == split["val"]  # only the held-out case, none scored as missing
    assert not evaluation["missing_predictions"]
    info = json.loads((out / "inference.json").read_text())
    assert info["model"] == "unet" and len(info["latency_s"]) == 1
    pred = out / "predictions" / f"{split['val'][0]}.nii.gz"
    import nibabel as nib

    ref = tiny_brats / split["val"][0] / f"{split['val'][0]}_seg.nii.gz"
    assert nib.load(pred).shape == nib.load(ref).shape  # back on the original grid
    assert set(np.unique(np.asarray(nib.load(pred).dataobj))) <= {0, 1, 2, 4}  # BraTS labels


def test_cross_validation_two_folds(tiny_brats: Path, tmp_path: Path, tiny_config: dict) -> None:
    from transmed.training.run import cross_validate

    cfg = TrainConfig(**{**tiny_config, "epochs": 1})
    out = tmp_path / "cv"
    summary = cross_validate(tiny_brats, out, cfg, folds=2, progress=False)
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits) == 2
    assert sorted(p.name for p in (out / "oof").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for s in splits for c in s["val"]
    )
    assert summary["folds"] == 2 and summary["table"][2].startswith("| WT |")
    # re-running resumes: finished folds are kept, not retrained
    mtime = (out / "fold_0" / "checkpoints" / "final.pt").stat().st_mtime
    cross_validate(tiny_brats, out, cfg, folds=2, progress=False)
    assert (out / "fold_0" / "checkpoints" / "final.pt").stat().st_mtime == mtime
    # a user-supplied splits file wins
    mine = tmp_path / "mine.json"
    ids = sorted(c for s in splits for c in s["val"])
    mine.write_text(json.dumps([{"train": ids[1:], "val": ids[:1]},
                                {"train": ids[:1], "val": ids[1:]}]))  # every case validated once
    cross_validate(tiny_brats, tmp_path / "cv2", cfg, splits_file=mine, progress=False)
    assert json.loads((tmp_path / "cv2" / "splits.json").read_text())[0]["val"] == ids[:1]


def test_demo_pipeline_tiny(tmp_path: Path) -> None:
    from transmed.demo import DemoSettings, run_demo

    settings = DemoSettings(cases=4, test_cases=2, shape=(40, 40, 32), epochs=1,
                            iters_per_epoch=2, patch_size=(32, 32, 32))  # fmt: skip
    result = run_demo(tmp_path / "demo", settings, progress=False)
    assert (tmp_path / "demo" / "comparison" / "compare.md").is_file()
    assert result["report"].is_file() and "transmed_full" in result["comparison"]
    for model in settings.models:
        assert (tmp_path / "demo" / "runs" / model / "evaluation.csv").is_file()


def test_deep_supervision_and_checkpointing_run(
    tiny_brats: Path, tmp_path: Path, tiny_config: dict
) -> None:
    cfg = TrainConfig(**{**tiny_config, "model": "transmed_full", "epochs": 1,
                         "deep_supervision": True, "grad_checkpointing": True,
                         "model_kwargs": {"features": [8, 16, 32, 32], "attention_head_dim": 8}})
    result = train(tiny_brats, tmp_path / "ds", cfg, progress=False)
    assert result.epochs_run == 1 and result.nonfinite_steps == 0
    ckpt = load_checkpoint(tmp_path / "ds" / "checkpoints" / "final.pt")
    assert ckpt["model_config"]["kwargs"]["deep_supervision"] is True
    assert any(k.startswith("aux_heads.") for k in ckpt["model"])
    assert ckpt["preprocess_config"]["reference"] == "t1ce"


def test_checkpoint_from_another_model_is_refused(tmp_path: Path) -> None:
    from transmed.models import create_model
    from transmed.training.checkpoint import save_checkpoint

    unet = create_model("unet", features=(8, 16, 32, 32))
    other = create_model("transmed_d", features=(8, 16, 32, 32))
    path = tmp_path / "mixed.pt"
    save_checkpoint(path, {"model": other.state_dict(), "model_config": unet.config})
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(path)


def test_demo_cli_defaults_come_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import transmed.demo as demo

    seen = {}

    def fake_run(out: Path, settings: demo.DemoSettings) -> dict:
        seen["settings"] = settings
        return {"comparison": "table", "minutes": 0.0, "report": out / "report.html"}

    monkeypatch.setattr(demo, "run_demo", fake_run)
    r = runner.invoke(app, ["demo", "--study", "--out", str(tmp_path), "--epochs", "3",
                            "--models", "unet, segresnet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert seen["settings"] == demo.DemoSettings(epochs=3, models=("unet", "segresnet"))


def test_inference_uses_the_dynamic_temperature_the_weights_were_trained_at(
    tiny_brats: Path, tmp_path: Path
) -> None:
    """τ is annealed 30 -> 1 in training; a model rebuilt from the checkpoint must not mix its
    kernels at the constructor's τ = 30."""
    from transmed.models.checkpoint import checkpoint_temperature, load_checkpoint
    from transmed.models.layers import DynamicConv3d

    cfg = TrainConfig(model="transmed_d", model_kwargs={"features": [8, 16, 16, 16]}, epochs=2,
                      iters_per_epoch=1, batch_size=1, patch_size=(32, 32, 24), val_every=2,
                      num_workers=0, temperature_start=30.0, temperature_end=1.0,
                      temperature_epochs=1.0)  # fmt: skip
    out = tmp_path / "dyn"
    train(tiny_brats, out, cfg, progress=False, evaluate=False)
    path = out / "checkpoints" / "final.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["dynamic_temperature"] == pytest.approx(1.0)
    model = load_model(path)
    taus = [m.temperature for m in model.modules() if isinstance(m, DynamicConv3d)]
    assert taus and all(t == pytest.approx(1.0) for t in taus)
    # a checkpoint written before τ was recorded: recomputed from its config and epoch
    del ckpt["dynamic_temperature"]
    assert checkpoint_temperature(ckpt) == pytest.approx(1.0)
    ckpt["epoch"] = 0
    ckpt["train_config"]["temperature_epochs"] = 2.0
    assert checkpoint_temperature(ckpt) == pytest.approx(30.0)
    assert checkpoint_temperature({"model": {}, "model_config": {}}) is None
