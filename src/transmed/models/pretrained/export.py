"""Turn a training checkpoint into shipped weights: model + configs only, fp16 storage.

    python -m transmed.models.pretrained.export RUN/checkpoints/final.pt OUT.pt \
        --name generalist --version 1.0 [--inference-mode sliding]

Prints the SHA-256 to record in :data:`transmed.models.pretrained.PRETRAINED`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from transmed.models.checkpoint import load_checkpoint, save_checkpoint

#: Checkpoint keys that describe the model and its data; the optimiser state and history do
#: not ship.
KEEP = ("model_config", "train_config", "preprocess_config", "inference_mode", "training_data",
        "data_profile", "dynamic_temperature", "epoch", "best_dice", "postprocess",
        "tta_axes")  # fmt: skip


def export_checkpoint(src: Path, dst: Path, *, name: str, version: str, fp16: bool = True,
                      overrides: dict[str, Any] | None = None) -> str:  # fmt: skip
    """Write the shipped checkpoint ``dst``; return its SHA-256."""
    from transmed.models.pretrained import sha256_file

    ckpt = load_checkpoint(src)
    state = {k: v.half() if fp16 and v.is_floating_point() else v for k, v in ckpt["model"].items()}
    out: dict[str, Any] = {"model": state, **{k: ckpt[k] for k in KEEP if k in ckpt}}
    out["pretrained"] = {"name": name, "version": version, "source": src.name,
                         "weights_dtype": "float16" if fp16 else "float32"}  # fmt: skip
    out.update(overrides or {})
    save_checkpoint(dst, out)
    return sha256_file(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--overrides", type=Path, help="JSON of checkpoint keys to set")
    args = ap.parse_args()
    over = json.loads(args.overrides.read_text()) if args.overrides else None
    torch.set_num_threads(1)
    print(export_checkpoint(args.src, args.dst, name=args.name, version=args.version,
                            overrides=over))  # fmt: skip


if __name__ == "__main__":
    main()
