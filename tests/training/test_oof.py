"""Held-out prediction's inference.json: what ran (torch device, inference mode), not the CPU's
architecture name ("x86_64" used to show as the device in the demo's report)."""

from __future__ import annotations

import json
from pathlib import Path

from transmed.training.oof import predict_cases
from transmed.training.run import prepare_data


def test_inference_json_names_the_torch_device_and_the_mode(
    tiny_brats: Path, tmp_path: Path, checkpoint_factory
) -> None:
    preprocessed, ids = prepare_data(tiny_brats, tmp_path / "pre", progress=False)
    ckpt = checkpoint_factory(tmp_path / "m.pt", name="unet", patch=(16, 16, 16))
    info = predict_cases([(ckpt, ids[:1])], preprocessed, tmp_path / "run", tmp_path / "pred",
                         progress=False)  # fmt: skip
    assert info["device"] == "cpu" and info["inference_mode"] == "sliding"
    assert info["processor"]  # the architecture is kept, under its own name
    assert json.loads((tmp_path / "run" / "inference.json").read_text()) == info
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1
