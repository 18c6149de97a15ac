"""Shared test settings: one torch thread per xdist worker, deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: oversubscribing threads makes every test slower.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


#: The real clinical example (TCIA TCGA-FG-6692, four NIfTI series on three grids), looked for
#: in this order: $TRANSMED_TCGA_DIR, the repository's examples/ folder, the ../shared/data
#: folder beside the clone (what CI provides).
TCGA_ENV = "TRANSMED_TCGA_DIR"
TCGA_NAME = "TCGA-FG-6692"
_REPO = Path(__file__).resolve().parents[1]


def tcga_candidates() -> list[Path]:
    env = os.environ.get(TCGA_ENV)
    return ([Path(env)] if env else []) + [
        _REPO / "examples" / TCGA_NAME, _REPO.parent / "shared" / "data" / TCGA_NAME
    ]  # fmt: skip


def find_tcga() -> Path | None:
    """The folder holding ``TCGA-FG-6692_{t1,t1c,t2,flair}.nii.gz``, or ``None``."""
    for folder in tcga_candidates():
        if (folder / f"{TCGA_NAME}_t1c.nii.gz").is_file():
            return folder
    return None


@pytest.fixture
def tcga_dir() -> Path:
    """The real TCGA example's folder. It ships in ``examples/``, so a checkout without it is
    broken: the test fails, saying where it looked."""
    folder = find_tcga()
    if folder is None:
        looked = ", ".join(str(p) for p in tcga_candidates())
        pytest.fail(f"real TCGA example not found (looked in {looked}); restore "
                    f"examples/{TCGA_NAME}/ or set {TCGA_ENV} to the folder holding "
                    f"{TCGA_NAME}_{{t1,t1c,t2,flair}}.nii.gz", pytrace=False)  # fmt: skip
    return folder


def make_tiny_checkpoint(path, name: str = "transmed_full", patch=(32, 32, 32), **prep):
    """A small random-init model saved as a real TransMed checkpoint (for inference tests).

    The weights are untrained, so tests use it for plumbing, shapes and geometry, never for
    segmentation quality.
    """
    from dataclasses import asdict

    from transmed.models.checkpoint import save_untrained_checkpoint
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
