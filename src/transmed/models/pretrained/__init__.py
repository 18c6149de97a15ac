"""Shipped weights, resolved by name: ``resolve_model("generalist")``.

Each entry is a complete TransMed checkpoint stored in this folder (fp16 weights, read with
``torch.load(weights_only=True)``), with its SHA-256 recorded here. The hash is checked before
the file is read, so a corrupted or tampered file is refused with a message naming it and
saying how to reinstall. The model card is ``docs/model_card.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transmed.io.hashing import file_sha256 as sha256_file
from transmed.models.checkpoint import CheckpointError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PretrainedModel:
    name: str
    file: str  # in this folder
    sha256: str
    version: str
    summary: str

    @property
    def path(self) -> Path:
        return HERE / self.file


#: The shipped models. ``generalist`` is the default of ``transmed predict``.
PRETRAINED: dict[str, PretrainedModel] = {
    "generalist": PretrainedModel(
        name="generalist",
        file="generalist_v2_1.pt",
        sha256="31087dc6e2c92f2c6e5d19e4594ac3b88df3836c5bff3ae0fcfea25936540ea3",
        version="2.1",
        summary="transmed_a (residual axial attention) trained only on domain-randomised "
        "synthetic heads and brains (skull on or stripped, 1-7.5 mm slices, missing series); "
        "1.5 mm working grid",
    ),
}
DEFAULT_PRETRAINED = "generalist"


def list_pretrained() -> list[PretrainedModel]:
    return [PRETRAINED[k] for k in sorted(PRETRAINED)]


def _reinstall_hint() -> str:
    return (
        "reinstall TransMed (for example `pip install --force-reinstall transmed`, or "
        "`git checkout -- src/transmed/models/pretrained/` in a source checkout)"
    )


def pretrained_path(name: str = DEFAULT_PRETRAINED) -> Path:
    """The verified file of shipped model ``name``.

    Raises:
        CheckpointError: unknown name, missing file, or a SHA-256 that does not match.
    """
    if name not in PRETRAINED:
        raise CheckpointError(
            f"unknown pretrained model {name!r}; shipped: {sorted(PRETRAINED)}"
        )
    entry = PRETRAINED[name]
    path = entry.path
    if not path.is_file():
        raise CheckpointError(f"{path}: the shipped weights of {name!r} are missing; "
                              f"{_reinstall_hint()}")  # fmt: skip
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise CheckpointError(
            f"{path}: SHA-256 {digest[:16]}… does not match the shipped "
            f"{entry.sha256[:16]}… (corrupted or tampered weights); {_reinstall_hint()}"
        )
    return path


def resolve_model(arg: str | Path | None) -> Path:
    """``None`` -> the default shipped model; a shipped name -> its verified file; anything
    else is a path (checkpoint, run folder, cross-validation folder) returned as is."""
    if arg is None:
        return pretrained_path(DEFAULT_PRETRAINED)
    if isinstance(arg, str) and arg in PRETRAINED:
        return pretrained_path(arg)
    return Path(arg)
