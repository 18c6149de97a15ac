"""The generalist recipe: TransMed trained only on the domain-randomised generator.

``transmed train --preset generalist --out RUN`` (resumable with ``--resume``) trains from
:mod:`transmed.data.generator` with no disk cohort. The run folder holds, besides the usual
``config.json``, ``metrics.csv`` and ``checkpoints/``:

- ``generator.json``: the generator's settings and the label-map pool (seed, size, spacing);
- ``labelmaps/``: the cached pool (regenerated from its seeds if deleted);
- ``validation/generated/*.npz``: held-out generated cases (label maps of another seed, whole
  heads or brains, all the appearance and resolution draws), logged as ``val_dice_*``;
- ``validation/cohort/*.npz``: cases of the original ``transmed data synth`` cohort (fixed
  contrasts, skull-stripped, 1 mm anatomy at the working spacing), logged as ``cohort_dice_*``.

Choices, measured on the 2-core development machine (see docs/model_card.md): 1.5 mm working
grid, 64³ patches (96 mm), ``transmed_a`` at its default width (5.5 M parameters), batch 2.
``transmed_full`` costs 2.2 s per step there against 0.5 s for ``transmed_a`` (dynamic
convolution's per-sample kernels in the backward pass), so at a fixed CPU budget the
attention-only variant sees 4x more samples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from transmed.data.generator import GeneratorConfig, GeneratorDataset, LabelMapPool
from transmed.data.generator.dataset import sample_rng
from transmed.data.generator.sample import draw_sample, fine_to_internal
from transmed.training.config import ConfigError, TrainConfig, load_config
from transmed.transforms.store import save_arrays, write_json

#: Working grid of the generalist model (mm, isotropic, RAS).
GENERALIST_SPACING = 1.5
POOL_SIZE = 96
POOL_SEED = 0
VAL_POOL_SEED = 1
N_VAL_GENERATED = 6
N_VAL_COHORT = 4
COHORT_SEED = 7


def generalist_config(**overrides: Any) -> TrainConfig:
    """The recipe's TrainConfig, with ``overrides`` (a config file's keys, CLI options, tests).

    The attention models get their relative-bias reach from the training patch; another
    registered model (``model="unet"`` for the baseline with the same recipe) gets its
    defaults. A ``model_kwargs`` override is merged into the recipe's (its keys win), so adding
    one argument, e.g. ``{"axial_layer_scale": 1e-5}``, keeps the patch-derived reach.

    Raises:
        ConfigError: an invalid value (the message names the key).
    """
    from transmed.models.registry import model_kwargs

    model = overrides.get("model", "transmed_a")
    patch = overrides.get("patch_size", (64, 64, 64))
    try:
        takes_patch = "patch_size" in model_kwargs(model)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"generalist recipe: {exc}") from None
    base: dict[str, Any] = {
        "model": model,
        "model_kwargs": {"patch_size": int(max(patch))} if takes_patch else {},
        "epochs": 22,
        "iters_per_epoch": 250,
        "batch_size": 2,
        "patch_size": (64, 64, 64),
        "lr": 2e-3,
        "warmup_epochs": 1.0,
        "schedule": "poly",
        "val_every": 3,
        "val_overlap": 0.25,
        "num_workers": 0,
        "seed": 0,
    }
    merged = {**base, **overrides}
    if isinstance(overrides.get("model_kwargs"), dict):
        merged["model_kwargs"] = {**base["model_kwargs"], **overrides["model_kwargs"]}
    return load_config(None, **merged)  # ConfigError naming the key


#: The recipe's generator settings where they differ from GeneratorConfig's defaults.
GENERATOR_RECIPE: dict[str, Any] = {"tumour_free_prob": 0.15}
_GENERATOR_TUPLES = ("patch_size", "scale", "slice_mm", "lowres_mm")


def generalist_generator(patch_size: Any = (64, 64, 64), **overrides: Any) -> GeneratorConfig:
    """The recipe's generator settings, with ``overrides`` (the ``generator`` mapping of a
    config file).

    Raises:
        ConfigError: an unknown key or an invalid value (the message names it).
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"generator: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return _generator_config({**GENERATOR_RECIPE, **overrides, "patch_size": patch_size})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"generator: {exc}") from None


def _generator_config(values: dict[str, Any]) -> GeneratorConfig:
    """GeneratorConfig from JSON-like values (lists for its tuple fields)."""
    return GeneratorConfig(**{k: tuple(v) if k in _GENERATOR_TUPLES else v
                              for k, v in values.items()})  # fmt: skip


def generalist_recipe(overrides: dict[str, Any]) -> tuple[TrainConfig, GeneratorConfig]:
    """The recipe's TrainConfig and generator with ``overrides`` (a config file's keys and the
    CLI options; its ``generator`` mapping sets the generator's draws).

    Raises:
        ConfigError: an invalid key or value (the message names it).
    """
    over = dict(overrides)
    gen_over = over.pop("generator", None) or {}
    if not isinstance(gen_over, dict):
        raise ConfigError("generator: expected a mapping of generator settings")
    config = generalist_config(**over)
    return config, generalist_generator(tuple(config.patch_size), **gen_over)


def generalist_preprocess_config() -> dict[str, Any]:
    """What ``predict`` must do to raw input for this model (checked by PreprocessConfig)."""
    from transmed.transforms.preprocess import PreprocessConfig

    cfg: dict[str, Any] = {
        "target_spacing": [GENERALIST_SPACING] * 3,
        "reference": "t1ce",
        "foreground": "auto",
        "margin_mm": 5.0,
        "label_interpolation": "linear",
        "coregistration": "auto",
        "brain_extraction": "auto",
        "missing_modalities": "zero",  # trained with modality dropout
    }
    PreprocessConfig(**{**cfg, "target_spacing": tuple(cfg["target_spacing"])})  # validates
    return cfg


def _cohort_case(index: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """A case of the original synthetic cohort on the working grid, preprocessed the way
    skull-stripped input is (RAS, z-score over the brain, crop to it + 5 mm)."""
    from transmed.data.synth.anatomy import BRATS_FOV_MM
    from transmed.data.synth.case import generate_case

    shape = tuple(int(round(f / spacing)) for f in BRATS_FOV_MM)
    case = generate_case(COHORT_SEED, index, shape)
    image = np.stack([case.images[m].astype(np.float32) for m in ("t1", "t1ce", "t2", "flair")])
    label = np.zeros(case.seg.shape, np.uint8)
    label[case.seg == 1], label[case.seg == 2], label[case.seg == 4] = 1, 2, 3
    mask = image.any(axis=0)
    for c in range(4):
        v = image[c][mask]
        image[c] = np.where(mask, (image[c] - v.mean()) / max(float(v.std()), 1e-6), 0.0)
    nz = np.argwhere(mask)
    margin = int(round(5.0 / spacing))
    lo, hi = np.maximum(nz.min(0) - margin, 0), np.minimum(nz.max(0) + margin + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    image, label = image[(slice(None), *box)], label[box]
    # the cohort's arrays point to L, P, S; the network sees RAS
    return np.ascontiguousarray(image[:, ::-1, ::-1]), np.ascontiguousarray(label[::-1, ::-1])


def prepare_validation(out: Path, gen: GeneratorConfig, spacing: float,
                       progress: bool = True) -> tuple[list[Path], list[Path]]:  # fmt: skip
    """Write (once) the held-out generated and cohort cases; return their paths."""
    from transmed.progress import progress_bar

    gen_dir, coh_dir = out / "validation" / "generated", out / "validation" / "cohort"
    pool = LabelMapPool(out / "labelmaps", N_VAL_GENERATED, VAL_POOL_SEED, spacing)
    generated = []
    for i in progress_bar(range(N_VAL_GENERATED), desc="validation cases", disable=not progress):
        path = gen_dir / f"generated_{i:03d}.npz"
        if not path.is_file():
            rng = sample_rng(VAL_POOL_SEED, 0, i)
            image, fine, info = draw_sample(pool.get(i), rng, gen, whole=True)
            save_arrays(path, image, fine_to_internal(fine))
            write_json(info, path.with_suffix(".json"))
        generated.append(path)
    cohort = []
    for i in range(N_VAL_COHORT):
        path = coh_dir / f"cohort_{i:03d}.npz"
        if not path.is_file():
            save_arrays(path, *_cohort_case(i, spacing))
        cohort.append(path)
    return generated, cohort


def train_generalist(out: Path, config: TrainConfig | None = None, *, resume: bool = False,
                     generator: GeneratorConfig | None = None, pool_size: int = POOL_SIZE,
                     device: str | None = None, progress: bool = True) -> Any:  # fmt: skip
    """Train (or resume) the generalist recipe in ``out``."""
    from transmed.training.trainer import Trainer, write_run_files

    out = Path(out)
    gen_file = out / "generator.json"
    init_state = None
    if resume:
        if not gen_file.is_file() or not (out / "checkpoints" / "latest.pt").is_file():
            raise ConfigError(f"{out}: not a generalist run to resume")
        meta = json.loads(gen_file.read_text())
        saved = json.loads((out / "config.json").read_text())
        config = TrainConfig(**{k: v for k, v in saved.items() if k != "data"}).stored()
        # keys a run predates take GeneratorConfig's defaults, which draw as before
        generator = _generator_config(meta["generator"])
        pool_size, spacing = int(meta["pool_size"]), float(meta["spacing_mm"])
    else:
        if (out / "checkpoints").exists() or (out / "config.json").exists():
            raise ConfigError(f"{out}: already holds a run; use --resume to continue it")
        config = config or generalist_config()
        if config.init_from:  # start from a shipped model, a checkpoint or a run
            from transmed.training.run import initial_weights

            config, init_state = initial_weights(config)
        config = config.pinned()
        generator = generator or generalist_generator(tuple(config.patch_size))
        spacing = GENERALIST_SPACING
        write_run_files(out, config, {"train": [], "val": []}, Path("generator"))
        write_json({"generator": generator.to_dict(), "pool_size": pool_size,
                    "pool_seed": POOL_SEED, "spacing_mm": spacing}, gen_file)  # fmt: skip
    if tuple(generator.patch_size) != tuple(config.patch_size):
        raise ConfigError("the generator's patch_size must equal the training patch_size")
    pool = LabelMapPool(out / "labelmaps", pool_size, POOL_SEED, spacing)
    pool.build(progress)
    generated, cohort = prepare_validation(out, generator, spacing, progress)
    dataset = GeneratorDataset(pool, generator, config.iters_per_epoch * config.batch_size,
                               config.seed)  # fmt: skip
    extra_state = {
        "training_data": {
            "source": "transmed.data.generator (synthetic only)",
            "generator": generator.to_dict(), "pool_size": pool_size, "spacing_mm": spacing,
            "skull_stripped": "both", "modality_dropout": True,
        },
        # the same facts in the form `predict` compares inputs with (provenance warnings)
        "data_profile": {
            "cases": "generated", "skull_stripped_fraction": round(1.0 - generator.skull_prob, 4),
            "max_slice_mm": max(generator.slice_mm),
            "spacing_mm": [spacing, spacing],
        },
    }  # fmt: skip
    trainer = Trainer(
        config, None, out, {"train": [], "val": [p.stem for p in generated]}, device=device,
        progress=progress, train_dataset=dataset, val_paths=generated,
        extra_val={"cohort": cohort}, preprocess_config=generalist_preprocess_config(),
        extra_state=extra_state, init_state=init_state,
    )  # fmt: skip
    return trainer.run(resume=resume)
