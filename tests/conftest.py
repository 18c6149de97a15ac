"""Shared test settings: one torch thread per xdist worker, deterministic seeds."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: oversubscribing threads makes every test slower.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_tiny_checkpoint(path, name: str = "transmed_full", patch=(32, 32, 32), **prep):
    """A small random-init model saved as a real TransMed checkpoint (for inference tests).

    The weights are untrained, so tests use it for plumbing, shapes and geometry, never for
    segmentation quality.
    """
    from dataclasses import asdict

    from transmed.training.checkpoint import save_untrained_checkpoint
    from transmed.transforms.preprocess import PreprocessConfig

    kwargs = {"features": (8, 16, 32, 64)} if name.startswith(("transmed", "unet")) else {}
    prep.setdefault("target_spacing", (2.0, 2.0, 2.0))
    return save_untrained_checkpoint(
        path, name, patch_size=patch, preprocess=asdict(PreprocessConfig(**prep)), **kwargs
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path to a small untrained transmed_full checkpoint (2 mm network grid, 32³ patches)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def checkpoint_factory():
    """``checkpoint_factory(path, name="transmed_full", patch=(32,)*3, **preprocess)``."""
    return make_tiny_checkpoint
