"""Every registered model: shapes, backward, bf16, checkpointing, bad input (timm-style grid)."""

from __future__ import annotations

import pytest
import torch

from transmed.models import autocast, create_model, create_model_from_config, list_models
from transmed.models.blocks import Checkpointed

# Small widths for the heavy MONAI peers keep the grid within seconds on 2 cores; the
# TransMed family runs at its shipped defaults.
TEST_KWARGS: dict[str, dict] = {
    "swinunetr": {"feature_size": 12},
    "unetr": {"img_size": 48, "hidden_size": 96, "num_heads": 4},
    "dynunet": {"filters": (8, 16, 32, 64, 64)},
    "segresnet": {"init_filters": 8},
}
SHAPE = (40, 48, 36)  # non-cubic, not powers of two
ALL = list_models()


def _make(name: str, **extra: object) -> torch.nn.Module:
    return create_model(name, in_channels=4, out_channels=3, **TEST_KWARGS.get(name, {}), **extra)


def test_registry_lists_the_ablation_and_the_peers() -> None:
    for name in ["unet", "transmed_a", "transmed_d", "transmed_full"]:
        assert name in ALL
    for name in ["segresnet", "swinunetr", "unetr", "dynunet"]:
        assert name in ALL


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_no_nan(name: str) -> None:
    model = _make(name).train()
    x = torch.randn(1, 4, *SHAPE)
    y = model(x)
    assert y.shape == (1, 3, *SHAPE)
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    # MONAI's ViT blocks register a cross-attention norm that self-attention never uses.
    unused = [k for k, p in model.named_parameters() if p.grad is None]
    assert all("norm_cross_attn" in k for k in unused), unused
    used = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in used)
    assert sum(float(g.abs().sum()) for g in used) > 0


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_forward(name: str) -> None:
    model = _make(name).eval()
    x = torch.randn(1, 4, *SHAPE)
    with torch.inference_mode(), autocast("cpu", "bf16"):
        y = model(x)
    assert y.shape == (1, 3, *SHAPE)
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", ALL)
def test_grad_checkpointing_same_outputs_and_grads(name: str) -> None:
    x = torch.randn(1, 4, 32, 32, 32)
    model = _make(name).train()
    assert any(isinstance(m, Checkpointed) for m in model.modules())

    def run(enable: bool) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enable)
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = model(x)
        y.square().mean().backward()
        grads = [p.grad for p in model.parameters()]
        return y.detach(), [g.clone() if g is not None else None for g in grads], saved

    y0, g0, saved0 = run(False)
    y1, g1, saved1 = run(True)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0, strict=False):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Checkpointing must really drop activations from the autograd graph.
    assert saved1 < 0.6 * saved0, (saved1, saved0)


@pytest.mark.parametrize("name", ALL)
def test_bad_input_raises_value_error(name: str) -> None:
    model = _make(name).eval()
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 3, *SHAPE))
    with pytest.raises(ValueError, match="5D input"):
        model(torch.randn(4, *SHAPE))
    with pytest.raises(ValueError, match="5D input"):
        model(torch.randn(1, 4, 40, 48))


def test_tiny_input_is_padded_to_the_minimum_size() -> None:
    model = _make("transmed_full").train()
    assert model.padded_size((5, 16, 40)) == (32, 32, 48)
    y = model(torch.randn(1, 4, 5, 16, 40))
    assert y.shape == (1, 3, 5, 16, 40)


def test_fixed_size_model_refuses_larger_input() -> None:
    model = _make("unetr").eval()
    assert model.fixed_size == (48, 48, 48)
    with pytest.raises(ValueError, match="sliding-window"):
        model(torch.randn(1, 4, 64, 48, 48))


def test_unknown_model_and_argument() -> None:
    with pytest.raises(ValueError, match="available models: .*transmed_full"):
        create_model("transmed_xl")
    with pytest.raises(ValueError, match="unknown argument.*depth"):
        create_model("unet", depth=3)
    with pytest.raises(ValueError, match="in_channels"):
        create_model("unet", in_channels=0)
    with pytest.raises(ValueError, match="features"):
        create_model("unet", features=(16,))
    with pytest.raises(ValueError, match="attention_head_dim"):
        create_model("transmed_a", features=(16, 32, 48, 80))
    with pytest.raises(ValueError, match="norm"):
        create_model("transmed_d", norm="batch")


@pytest.mark.parametrize("name", ["unet", "transmed_full", "segresnet"])
def test_config_rebuilds_the_same_model(name: str) -> None:
    model = _make(name)
    clone = create_model_from_config(model.config)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(1, 4, 16, 16, 16)
    model.eval()
    clone.eval()
    with torch.inference_mode():
        torch.testing.assert_close(clone(x), model(x))


def test_ablation_variants_differ_only_in_switches() -> None:
    base = {k for k, _ in create_model("unet").named_parameters()}
    axial = {k for k, _ in create_model("transmed_a").named_parameters()}
    full = create_model("transmed_full")
    assert base < axial and any("attn" in k for k in axial - base)
    assert full.dynamic and full.axial
    dyn_keys = {k for k, _ in create_model("transmed_d").named_parameters()}
    assert any(k.endswith("attention.0.weight") for k in dyn_keys)


def test_deep_supervision_outputs() -> None:
    model = create_model("transmed_full", deep_supervision=True).train()
    outs = model(torch.randn(1, 4, *SHAPE))
    assert [tuple(o.shape[2:]) for o in outs] == [SHAPE, (20, 24, 18), (10, 12, 9)]
    model.eval()
    assert model(torch.randn(1, 4, *SHAPE)).shape == (1, 3, *SHAPE)


def test_fp16_autocast_needs_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        with autocast("cpu", "fp16"):
            pass
    with pytest.raises(ValueError, match="precision"):
        with autocast("cpu", "int8"):
            pass
