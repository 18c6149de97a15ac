"""Is the axial attention of trained checkpoints working, or collapsed?

For every axial attention layer of each model, on the given cases (a centred crop of each, the
training patch size), forward hooks record:

- the attention weights' mean entropy, as a fraction of the uniform entropy log(L) along that
  axis (1: uniform, 0: one-hot), and the mean largest weight;
- the standard deviation of the attention logits (QKᵀ/√d + bias);
- per block, the RMS of its output change against the RMS of its input (how much the block
  rewrites the convolutional features it is added to).

A collapsed layer has entropy near 0, a largest weight near 1 and logits in the hundreds or
more: its softmax passes no gradient and it acts as a hard, data-dependent copy.

    python benchmarks/attention_health.py --models v1_0=runs/stage1/checkpoints/final.pt \
        --cases runs/stage1/validation/generated --out benchmarks/results/generalist/axial_layout
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from transmed.io.atomic import atomic_write_text
from transmed.models.checkpoint import load_model
from transmed.models.layers.axial_attention import AxialAttentionBlock3d, AxialSelfAttention


def axis_stats(attn: AxialSelfAttention, x: torch.Tensor, axis: int) -> dict[str, float]:
    """Entropy, largest weight and logit spread of ``attn`` on its input ``x`` (B, D, H, W, C)."""
    logits = attn.attention_logits(x, axis)  # (lines, heads, L, L)
    length = logits.shape[-1]
    weights = logits.softmax(-1)
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1).mean().item()
    return {
        "axis": "DHW"[axis - 1],
        "length": length,
        "entropy_fraction": entropy / math.log(length) if length > 1 else 1.0,
        "max_weight": weights.amax(-1).mean().item(),
        "logit_std": logits.std().item(),
    }


def model_stats(model: torch.nn.Module, x: torch.Tensor) -> list[dict]:
    """One record per axial block: its layout, output/input RMS ratio and per-axis stats."""
    blocks: list[dict] = []
    hooks = []
    for module in model.modules():
        if isinstance(module, AxialAttentionBlock3d):
            record: dict = {"layout": module.layout, "axes": []}
            if module.gammas is not None:  # LayerScale: mean |gain| per branch (D, H, W, MLP)
                record["gain_abs_mean"] = module.gammas.detach().abs().mean(1).tolist()
            blocks.append(record)

            def on_block(mod, args, out, record=record):
                inp = args[0]
                record["grid"] = list(inp.shape[2:])
                record["channels"] = inp.shape[1]
                rms_in = inp.pow(2).mean().sqrt().item()
                record["rms_in"] = rms_in
                record["update_rms_ratio"] = (out - inp).pow(2).mean().sqrt().item() / rms_in

            hooks.append(module.register_forward_hook(on_block))
            for attn in module.attn:

                def on_axis(mod, args, record=record):
                    record["axes"].append(axis_stats(mod, args[0], args[1]))

                hooks.append(attn.register_forward_pre_hook(on_axis))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return blocks


def centred_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(C, D, H, W) → (C, size, size, size), centred, zero-padded where the image is smaller."""
    out = np.zeros((image.shape[0], size, size, size), np.float32)
    src, dst = [], []
    for n in image.shape[1:]:
        start = max(0, (n - size) // 2)
        length = min(n, size)
        offset = max(0, (size - n) // 2)
        src.append(slice(start, start + length))
        dst.append(slice(offset, offset + length))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="NAME=CHECKPOINT[,NAME=CHECKPOINT...]")
    ap.add_argument("--cases", type=Path, required=True, help="folder of validation .npz cases")
    ap.add_argument("--size", type=int, default=64, help="crop edge (the training patch)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = sorted(args.cases.glob("*.npz"))
    if not cases:
        raise SystemExit(f"{args.cases}: no .npz cases")
    result: dict = {"cases": [str(c) for c in cases], "size": args.size, "models": {}}
    for spec in args.models.split(","):
        name, path = spec.split("=", 1)
        model = load_model(path).eval()
        per_case = []
        for case in cases:
            image = centred_crop(np.load(case)["image"], args.size)
            per_case.append(model_stats(model, torch.from_numpy(image)[None]))
        blocks = []
        for i, first in enumerate(per_case[0]):  # mean over cases
            axes = [
                {k: (float(np.mean([pc[i]["axes"][a][k] for pc in per_case]))
                     if isinstance(v, float) else v) for k, v in ax.items()}
                for a, ax in enumerate(first["axes"])
            ]  # fmt: skip
            blocks.append({
                "layout": first["layout"], "grid": first["grid"], "channels": first["channels"],
                "update_rms_ratio": float(np.mean([pc[i]["update_rms_ratio"] for pc in per_case])),
                "axes": axes,
                **({"gain_abs_mean": first["gain_abs_mean"]} if "gain_abs_mean" in first else {}),
            })  # fmt: skip
        result["models"][name] = {"checkpoint": path, "blocks": blocks}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "attention_health.json", json.dumps(result, indent=2) + "\n")
    lines = [
        "# Attention health of trained checkpoints",
        "",
        f"Mean over {len(cases)} cases (`{args.cases}`), a centred {args.size}³ crop of each, "
        "eval mode. Entropy: the attention weights' mean entropy as a fraction of log(L) "
        "(1 uniform, 0 one-hot). Update/input: RMS of the block's output change over the RMS of "
        "its input.",
        "",
        "| model | layout | block (C, grid) | update / input RMS | axis | entropy | max weight | "
        "logit std |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for name, m in result["models"].items():
        for block in m["blocks"]:
            for j, ax in enumerate(block["axes"]):
                head = (
                    f"| {name} | {block['layout']} | {block['channels']}, "
                    f"{'×'.join(map(str, block['grid']))} | {block['update_rms_ratio']:.2f} |"
                    if j == 0 else "| | | | |"
                )  # fmt: skip
                lines.append(f"{head} {ax['axis']} (L {ax['length']}) | "
                             f"{ax['entropy_fraction']:.3f} | {ax['max_weight']:.3f} | "
                             f"{ax['logit_std']:.3g} |")  # fmt: skip
    gains = [(name, b) for name, m in result["models"].items() for b in m["blocks"]
             if "gain_abs_mean" in b]  # fmt: skip
    if gains:
        lines += [
            "",
            "LayerScale gains, mean |gain| over channels per residual branch:",
            "",
            "| model | block (C, grid) | D | H | W | MLP |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, b in gains:
            lines.append(
                f"| {name} | {b['channels']}, {'×'.join(map(str, b['grid']))} | "
                + " | ".join(f"{g:.3g}" for g in b["gain_abs_mean"])
                + " |"
            )
    lines.append("")
    atomic_write_text(args.out / "attention_health.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
