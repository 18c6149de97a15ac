"""Axial attention vs a brute-force reference; dynamic convolution vs a per-sample loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transmed.models.layers import (
    AxialAttentionBlock3d,
    AxialSelfAttention,
    DynamicConv3d,
    RelativePositionBias1d,
    set_dynamic_temperature,
    temperature_schedule,
)


def _reference_axis(attn, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Explicit softmax(QKᵀ/√d + B)V along ``axis`` of (B, D, H, W, C), bias built by loops."""
    xm = x.movedim(axis, 3)  # (B, P, Q, L, C)
    length, c = xm.shape[3], xm.shape[4]
    heads, d = attn.num_heads, attn.head_dim
    qkv = xm @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = (t.reshape(*xm.shape[:4], heads, d) for t in qkv.split(c, dim=-1))
    if isinstance(attn.q_norm, torch.nn.LayerNorm):  # QK-norm, written out
        q, k = (
            (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True)
                                                        + norm.eps) * norm.weight + norm.bias
            for t, norm in ((q, attn.q_norm), (k, attn.k_norm))
        )  # fmt: skip
    scores = torch.einsum("bpqihd,bpqjhd->bpqhij", q, k) / math.sqrt(d)
    table = attn.bias.table
    r = attn.bias.max_distance
    bias = torch.empty(heads, length, length, dtype=x.dtype)
    for h in range(heads):
        for i in range(length):
            for j in range(length):
                bias[h, i, j] = table[h, min(max(j - i, -r), r) + r]
    scores = scores + bias
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    out = torch.einsum("bpqhij,bpqjhd->bpqihd", weights, v).reshape(*xm.shape[:4], c)
    return out.movedim(3, axis)


def _reference_block(block: AxialAttentionBlock3d, x: torch.Tensor) -> torch.Tensor:
    t = x.permute(0, 2, 3, 4, 1)
    ones = torch.ones(4, t.shape[-1], dtype=t.dtype)
    gammas = ones if block.gammas is None else block.gammas  # LayerScale, one gain per branch
    if block.layout == "residual":  # a pre-norm residual sub-block per axis
        for axis in (1, 2, 3):
            h = _reference_axis(block.attn[axis - 1], block.norms[axis - 1](t), axis)
            t = t + gammas[axis - 1] * block.projs[axis - 1](h)
    else:  # "chained": one norm, the three axes chained, one projection
        h = block.norm1(t)
        for axis, attn in zip((1, 2, 3), block.attn, strict=False):
            h = _reference_axis(attn, h, axis)
        t = t + block.proj(h)
    t = t + gammas[3] * block.mlp(block.norm2(t))
    return t.permute(0, 4, 1, 2, 3)


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("layout,layer_scale", [("residual", None), ("chained", None),
                                                ("residual", 0.1)])  # fmt: skip
@pytest.mark.parametrize("spatial", [(5, 6, 7), (9, 4, 3)])
def test_axial_block_matches_brute_force(
    spatial: tuple[int, int, int], layout: str, layer_scale: float | None
) -> None:
    block = AxialAttentionBlock3d(8, num_heads=2, max_len=4, layout=layout,
                                  layer_scale=layer_scale).double()  # fmt: skip
    _randomise(block)  # non-trivial biases (and gains), including beyond-reach clipping
    x = torch.randn(2, 8, *spatial, dtype=torch.float64)
    torch.testing.assert_close(block(x), _reference_block(block, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", ["residual", "chained"])
def test_axial_block_inference_kernel_matches_brute_force(layout: str) -> None:
    # Without grad torch picks the fused CPU kernel (4D mask); with grad, the math kernel.
    block = AxialAttentionBlock3d(16, num_heads=4, max_len=6, layout=layout)
    _randomise(block)
    x = torch.randn(1, 16, 9, 7, 8)
    with torch.no_grad():
        ref = _reference_block(block, x)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), ref, rtol=1e-4, atol=1e-4)


def test_each_axis_mixes_only_along_its_axis() -> None:
    block = AxialAttentionBlock3d(8, num_heads=2, max_len=8).double()
    _randomise(block)
    attn = block.attn[0]
    x = torch.randn(1, 6, 5, 4, 8, dtype=torch.float64)  # (B, D, H, W, C)
    y = attn(x, 1)
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0  # change the D-line at (h=0, w=0) only
    y2 = attn(x2, 1)
    changed = (y2 - y).abs().sum(dim=(0, 1, 4)) > 0  # (H, W)
    assert changed[0, 0] and changed.sum() == 1


def _attention_weights(attn, x: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d + B) along D of a (B, D, H, W, C) tensor, as the layer computes it."""
    captured = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None):
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + attn_mask
        captured.append(scores.softmax(-1))
        return real(q, k, v, attn_mask=attn_mask)

    import transmed.models.layers.axial_attention as module

    module.F.scaled_dot_product_attention = spy
    try:
        attn(x, 1)
    finally:
        module.F.scaled_dot_product_attention = real
    return captured[0]


def test_qk_norm_bounds_the_attention_logits() -> None:
    # The v1 weights' failure: Q/K weights grown large gave one-hot attention (entropy 0).
    # With QK-norm the attention pattern does not depend on the Q/K weights' scale; without
    # it (the chained layout's layers), scaling them ×30 collapses the pattern.
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 3, 16, dtype=torch.float64)
    for qk_norm, same in ((True, True), (False, False)):
        attn = AxialSelfAttention(16, num_heads=2, max_distance=7, qk_norm=qk_norm).double()
        _randomise(attn)
        before = _attention_weights(attn, x)
        # the diagnostic (benchmarks/attention_health.py) sees what forward's softmax sees
        torch.testing.assert_close(attn.attention_logits(x, 1).softmax(-1), before)
        with torch.no_grad():
            attn.qkv.weight[:32] *= 30.0  # the Q and K rows
            attn.qkv.bias[:32] *= 30.0
        after = _attention_weights(attn, x)
        assert torch.allclose(before, after, atol=1e-9) is same
        entropy = -(after * after.clamp_min(1e-30).log()).sum(-1).mean()
        assert bool(entropy > 0.5) is same  # uniform over 8 keys: 2.08 nats


def test_residual_layout_keeps_each_axis_input_normalised() -> None:
    # In the chained layout the H and W attentions see the previous axis's raw output, so
    # their scale compounds; in the residual layout each axis sees a layer-normalised input.
    torch.manual_seed(0)
    x = torch.randn(1, 16, 6, 5, 4)
    for layout, compounding in (("residual", False), ("chained", True)):
        block = AxialAttentionBlock3d(16, num_heads=2, max_len=6, layout=layout)
        with torch.no_grad():
            for attn in block.attn:
                attn.qkv.weight[32:] *= 50.0  # large value projections
        seen: list[torch.Tensor] = []

        def record(module, args, seen=seen):
            seen.append(args[0].pow(2).mean().sqrt())  # RMS of the axis's input

        for attn in block.attn:
            attn.register_forward_pre_hook(record)
        block(x)
        assert seen[0] < 1.5  # every layout layer-normalises the first axis's input
        assert bool(max(seen[1:]) > 3.0) is compounding


def test_legacy_config_rebuilds_the_chained_layout() -> None:
    from transmed.models import create_model, create_model_from_config

    new = create_model("transmed_a", features=(8, 16, 32, 32), attention_head_dim=8,
                       patch_size=32)  # fmt: skip
    assert new.config["kwargs"]["axial_layout"] == "residual"  # recorded explicitly
    legacy_config = {"name": "transmed_a", "kwargs": {"features": (8, 16, 32, 32),
                     "attention_head_dim": 8, "patch_size": 32}}  # fmt: skip
    legacy = create_model_from_config(legacy_config)  # stored before axial_layout existed
    blocks = [m for m in legacy.modules() if isinstance(m, AxialAttentionBlock3d)]
    assert blocks and all(b.layout == "chained" for b in blocks)
    assert create_model_from_config(new.config).state_dict().keys() == new.state_dict().keys()
    with pytest.raises(ValueError, match="axial_layout"):
        create_model("transmed_a", axial_layout="parallel")


def test_relative_bias_beyond_training_length_is_clipped() -> None:
    bias = RelativePositionBias1d(num_heads=3, max_distance=4)
    b = bias(20)  # longer than anything with its own entry
    assert b.shape == (3, 20, 20)
    torch.testing.assert_close(b[:, 0, 19], bias.table[:, -1])  # distance +19 → +4 entry
    torch.testing.assert_close(b[:, 19, 0], bias.table[:, 0])  # distance −19 → −4 entry
    torch.testing.assert_close(b[:, 5, 7], bias.table[:, 4 + 2])
    block = AxialAttentionBlock3d(16, num_heads=4, max_len=4)
    y = block(torch.randn(1, 16, 12, 10, 9))  # every axis longer than max_len
    assert y.shape == (1, 16, 12, 10, 9) and torch.isfinite(y).all()


def test_axial_block_bf16() -> None:
    block = AxialAttentionBlock3d(16, num_heads=4, max_len=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(torch.randn(1, 16, 6, 7, 8))
    assert y.shape == (1, 16, 6, 7, 8) and torch.isfinite(y.float()).all()


def test_layer_scale_starts_the_block_as_the_identity_and_learns_its_gains() -> None:
    torch.manual_seed(0)
    eps = 1e-6
    block = AxialAttentionBlock3d(16, num_heads=4, max_len=8, layer_scale=eps).double()
    _randomise(block)  # large branches, then the gains back at their initial ε
    with torch.no_grad():
        block.gammas.fill_(eps)
    x = torch.randn(2, 16, 6, 5, 7, dtype=torch.float64)
    y = block(x)
    # to first order in ε the update is ε times the four branches evaluated on the input itself
    t = x.permute(0, 2, 3, 4, 1)
    branches = sum(block.projs[a - 1](block.attn[a - 1](block.norms[a - 1](t), a))
                   for a in (1, 2, 3)) + block.mlp(block.norm2(t))  # fmt: skip
    branches = branches.permute(0, 4, 1, 2, 3)
    assert branches.pow(2).mean().sqrt() > 0.5  # the same weights without ε change the input
    torch.testing.assert_close((y - x) / eps, branches, rtol=1e-3, atol=1e-4)
    y.sum().backward()  # the gains get a gradient, so training can open the branches
    assert block.gammas.grad is not None and block.gammas.grad.abs().sum(1).gt(0).all()
    assert block.gammas.shape == (4, 16)  # D, H, W and the MLP, per channel


def test_layer_scale_is_recorded_and_old_configs_rebuild_without_it() -> None:
    from transmed.models import create_model, create_model_from_config

    kw = {"features": (8, 16, 32, 32), "attention_head_dim": 8, "patch_size": 32}
    scaled = create_model("transmed_a", axial_layer_scale=1e-5, **kw)
    assert scaled.config["kwargs"]["axial_layer_scale"] == 1e-5
    blocks = [m for m in scaled.modules() if isinstance(m, AxialAttentionBlock3d)]
    assert len(blocks) == 2 and all(torch.all(b.gammas == 1e-5) for b in blocks)
    rebuilt = create_model_from_config(scaled.config)
    rebuilt.load_state_dict(scaled.state_dict())  # strict: the gains are part of the model
    stored = create_model_from_config({"name": "transmed_a",
                                       "kwargs": {**kw, "axial_layout": "residual"}})  # fmt: skip
    assert not any("gammas" in k for k in stored.state_dict())  # a config stored before: off
    with pytest.raises(ValueError, match="axial_layer_scale"):
        create_model("transmed_a", axial_layer_scale=1e-5, axial_layout="chained", **kw)
    with pytest.raises(ValueError, match="axial_layer_scale"):
        create_model("transmed_a", axial_layer_scale=0.0, **kw)


def test_axial_block_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        AxialAttentionBlock3d(10, num_heads=4)
    with pytest.raises(ValueError, match="max_len"):
        AxialAttentionBlock3d(8, num_heads=2, max_len=1)
    with pytest.raises(ValueError, match="layout"):
        AxialAttentionBlock3d(8, num_heads=2, layout="parallel")
    with pytest.raises(ValueError, match="residual layout"):
        AxialAttentionBlock3d(8, num_heads=2, layout="chained", layer_scale=1e-5)
    for bad in (0.0, -1e-5, float("nan")):
        with pytest.raises(ValueError, match="layer_scale"):
            AxialAttentionBlock3d(8, num_heads=2, layer_scale=bad)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("stride,bias", [(1, True), (2, False)])
@pytest.mark.parametrize("mode", ["grouped", "loop"])
def test_dynamic_conv_matches_per_sample_loop(batch: int, stride: int, bias: bool, mode: str):
    conv = DynamicConv3d(5, 6, 3, stride=stride, bias=bias, num_kernels=4, temperature=2.0,
                         batch_mode=mode)  # fmt: skip
    conv = conv.double()
    _randomise(conv.attention)
    x = torch.randn(batch, 5, 9, 8, 7, dtype=torch.float64)
    y = conv(x)
    pi = conv.kernel_attention(x)
    assert not torch.allclose(pi[:, 0], pi[:, 1])  # samples really mix differently
    for i in range(batch):
        w = sum(pi[i, k] * conv.weight[k] for k in range(4))
        b = sum(pi[i, k] * conv.bias[k] for k in range(4)) if bias else None
        ref = F.conv3d(x[i : i + 1], w, b, stride=stride, padding=1)
        torch.testing.assert_close(y[i : i + 1], ref, rtol=1e-10, atol=1e-10)


def test_dynamic_conv_temperature_controls_mixing() -> None:
    conv = DynamicConv3d(4, 4, 3, num_kernels=4, temperature=30.0)
    _randomise(conv.attention)
    x = torch.randn(2, 4, 6, 6, 6)
    hot = conv.kernel_attention(x)
    conv.set_temperature(0.05)
    cold = conv.kernel_attention(x)
    assert hot.std(dim=1).max() < cold.std(dim=1).max()
    torch.testing.assert_close(hot.sum(1), torch.ones(2))


def test_temperature_schedule_and_setter() -> None:
    assert temperature_schedule(0, 10, 30, 1) == 30
    assert temperature_schedule(5, 10, 30, 1) == pytest.approx(15.5)
    assert temperature_schedule(10, 10, 30, 1) == 1
    assert temperature_schedule(50, 10, 30, 1) == 1
    from transmed.models import create_model

    model = create_model("transmed_d")
    n = set_dynamic_temperature(model, 3.0)
    assert n > 0
    temps = {m.temperature for m in model.modules() if isinstance(m, DynamicConv3d)}
    assert temps == {3.0}


def test_dynamic_conv_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_kernels"):
        DynamicConv3d(4, 4, num_kernels=0)
    with pytest.raises(ValueError, match="temperature"):
        DynamicConv3d(4, 4, temperature=0)
    with pytest.raises(ValueError, match="expects"):
        DynamicConv3d(4, 4)(torch.randn(1, 3, 4, 4, 4))
