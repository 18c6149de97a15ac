"""Fine-tuning: ``--init-from`` a checkpoint or the shipped generalist model loads and trains."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from transmed.cli import app
from transmed.models.checkpoint import load_checkpoint, save_untrained_checkpoint
from transmed.training.config import TrainConfig
from transmed.training.run import train

runner = CliRunner()


def test_init_from_checkpoint_adopts_model_and_weights(tiny_brats: Path, tmp_path: Path) -> None:
    src = save_untrained_checkpoint(tmp_path / "init.pt", "transmed_a",
                                    features=(8, 16, 16), encoder_blocks=(1, 1, 1),
                                    attention_head_dim=8, axial_stages=(2,),
                                    decoder_blocks=(1, 1), patch_size=(32, 32, 32))  # fmt: skip
    init = load_checkpoint(src)["model"]
    cfg = TrainConfig(model="unet", epochs=1, iters_per_epoch=1, batch_size=1,
                      patch_size=(32, 32, 24), lr=1e-12, warmup_epochs=0.0, val_every=1,
                      num_workers=0, init_from=str(src))  # fmt: skip
    out = tmp_path / "ft"
    train(tiny_brats, out, cfg, progress=False, evaluate=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "transmed_a" and saved["model_kwargs"]["features"] == [8, 16, 16]
    assert saved["model_kwargs"]["axial_layout"] == "residual"  # pinned in the run's config
    final = load_checkpoint(out / "checkpoints" / "final.pt")["model"]
    for k, v in init.items():  # lr ~ 0: the run starts from (and stays at) the given weights
        if v.is_floating_point():
            assert torch.allclose(final[k].float(), v.float(), atol=1e-5), k


def test_init_from_generalist_loads_and_trains(tiny_brats: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft_generalist"
    res = runner.invoke(app, [
        "train", "--data", str(tiny_brats), "--out", str(out), "--init-from", "generalist",
        "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "1",
        "--patch-size", "32", "32", "24",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    assert ckpt["model_config"]["name"] == "transmed_a"
    # the shipped model's layout (v1 weights predate axial_layout and read as "chained") is
    # rebuilt and recorded, so --resume rebuilds the same model
    from transmed.models import stored_kwargs
    from transmed.models.pretrained import pretrained_path

    shipped = load_checkpoint(pretrained_path("generalist"))["model_config"]
    layout = stored_kwargs(shipped["name"], shipped["kwargs"])["axial_layout"]
    assert ckpt["model_config"]["kwargs"]["axial_layout"] == layout
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_kwargs"]["axial_layout"] == layout
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and float(rows[1].split(",")[2]) > 0  # one epoch, a finite loss


def test_init_from_a_checkpoint_written_before_axial_layout_rebuilds_it_chained(
        tiny_brats: Path, tmp_path: Path) -> None:  # fmt: skip
    """A v1-era checkpoint (its model config names no ``axial_layout``; its weights are a
    chained model's) fine-tunes as chained, and the new run records it."""
    from transmed.models.checkpoint import save_checkpoint

    src = save_untrained_checkpoint(tmp_path / "v1.pt", "transmed_a", features=(8, 16, 16),
                                    encoder_blocks=(1, 1, 1), attention_head_dim=8,
                                    axial_stages=(2,), decoder_blocks=(1, 1),
                                    patch_size=(32, 32, 32), axial_layout="chained")  # fmt: skip
    old = load_checkpoint(src)
    del old["model_config"]["kwargs"]["axial_layout"]
    save_checkpoint(src, old)
    cfg = TrainConfig(model="unet", epochs=1, iters_per_epoch=1, batch_size=1,
                      patch_size=(32, 32, 24), lr=1e-12, warmup_epochs=0.0, val_every=1,
                      num_workers=0, init_from=str(src))  # fmt: skip
    out = tmp_path / "ft_v1"
    train(tiny_brats, out, cfg, progress=False, evaluate=False)
    final = load_checkpoint(out / "checkpoints" / "final.pt")
    assert final["model_config"]["kwargs"]["axial_layout"] == "chained"
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_kwargs"]["axial_layout"] == "chained"
    for k, v in old["model"].items():  # the chained weights loaded (lr 1e-12: unchanged)
        assert torch.allclose(final["model"][k].float(), v.float(), atol=1e-5), k


def test_a_run_config_written_before_axial_layout_resumes_as_chained(tmp_path: Path) -> None:
    from transmed.training.trainer import read_run_config, write_run_files

    old = TrainConfig(model="transmed_a", model_kwargs={"patch_size": 64})  # no axial_layout
    write_run_files(tmp_path, old, {"train": ["a"], "val": []}, tmp_path)
    config, _, _ = read_run_config(tmp_path)
    assert config.model_kwargs == {"patch_size": 64, "axial_layout": "chained"}
    assert old.pinned().model_kwargs == {"patch_size": 64, "axial_layout": "residual"}
    assert TrainConfig(model="unet").pinned().model_kwargs == {}  # no attention, nothing pinned
