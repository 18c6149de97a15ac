"""The training loop: region-based Dice + BCE, AdamW with warm-up and decay, mixed precision,
activation checkpointing, dynamic-convolution temperature annealing, validation with the
inference path ``predict`` uses, atomic checkpoints and exact resumption.

Run folder (``out_dir``)::

    config.json         resolved TrainConfig + data source
    split.json          training and validation case ids
    metrics.csv         one row per epoch (loss, validation Dice per region, lr, time)
    tensorboard/        the same scalars for TensorBoard
    checkpoints/        latest.pt (every epoch), best.pt (best validation Dice), final.pt
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from transmed.data.labels import REGIONS, labels_to_regions
from transmed.inference.core import predict_probabilities
from transmed.models import autocast, create_model
from transmed.models.layers import set_dynamic_temperature, temperature_schedule
from transmed.progress import progress_bar
from transmed.training.checkpoint import load_checkpoint, save_checkpoint
from transmed.training.config import ConfigError, TrainConfig
from transmed.training.data import PatchDataset
from transmed.training.distributed import DistContext, init_distributed
from transmed.training.losses import build_loss
from transmed.training.schedule import build_scheduler
from transmed.transforms.store import load_arrays, write_json

CSV_FIELDS = ["epoch", "step", "train_loss", "lr", "temperature", "nonfinite_steps",
              "epoch_time_s"] + [f"val_dice_{r}" for r in REGIONS] + ["val_dice_mean"]  # fmt: skip


class TrainingError(RuntimeError):
    """The run cannot go on (persistent non-finite loss, nothing to train on, ...)."""


@dataclass
class TrainResult:
    out_dir: Path
    best_dice: float
    epochs_run: int
    nonfinite_steps: int


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 on CUDA GPUs that support it (else fp16), fp32 on CPU.

    bf16 on a CPU without native bf16 units (no AVX512-BF16/AMX) is emulated and slower than
    fp32, so "auto" keeps fp32 there; ask for "bf16" explicitly on CPUs that have them.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded random train/validation split (at least one validation case when asked)."""
    ids = sorted(case_ids)
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * len(ids))))
    if n_val >= len(ids):
        raise TrainingError(f"{len(ids)} case(s) cannot be split into training and validation")
    return {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}


def _finite_model(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def validate(
    model: torch.nn.Module, paths: list[Path], config: TrainConfig, precision: str
) -> dict[str, float]:
    """Mean Dice per region over validation cases, predicted by the ``predict`` code path in
    the inference mode the run's checkpoints record (``predict``'s default for them)."""
    from transmed.evaluation.metrics import dice
    from transmed.inference.core import window_for_mode
    from transmed.models.checkpoint import DEFAULT_INFERENCE_MODE

    # save_checkpoint records DEFAULT_INFERENCE_MODE in every checkpoint of the run
    window = window_for_mode(DEFAULT_INFERENCE_MODE, config.patch_size)
    scores = {r: [] for r in REGIONS}
    for path in paths:
        image, label = load_arrays(path)
        probs = predict_probabilities(
            model, image, roi_size=window, overlap=config.val_overlap, precision=precision,
        )  # fmt: skip
        ref = labels_to_regions(label)
        for i, r in enumerate(REGIONS):
            scores[r].append(dice(probs[i] > 0.5, ref[i]))
    out = {f"val_dice_{r}": float(np.mean(v)) for r, v in scores.items()}
    out["val_dice_mean"] = float(np.mean([out[f"val_dice_{r}"] for r in REGIONS]))
    return out


class Trainer:
    """One training run; ``run()`` trains (or resumes) and returns a :class:`TrainResult`."""

    def __init__(
        self,
        config: TrainConfig,
        preprocessed_dir: Path,
        out_dir: Path,
        split: dict[str, list[str]],
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
        dist_ctx: DistContext | None = None,
        train_dataset: Any = None,
        val_paths: list[Path] | None = None,
        extra_val: dict[str, list[Path]] | None = None,
        preprocess_config: dict[str, Any] | None = None,
        extra_state: dict[str, Any] | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
        hooks: Any = None,
    ) -> None:
        """``train_dataset`` (any Dataset of {"image", "target"} with ``set_epoch``, e.g. the
        synthetic generator) replaces the patches of ``preprocessed_dir``; then
        ``val_paths`` (preprocessed ``.npz``), ``preprocess_config`` (what ``predict`` must
        do to raw input) and ``extra_val`` (more named validation sets, logged as
        ``{name}_dice_{region}``) say the rest. ``extra_state`` is stored in every
        checkpoint; ``init_state`` gives the starting weights of a new run. ``hooks`` (used by
        ``transmed.federated``: FedProx, DP-SGD) may wrap what the loop steps with:
        ``hooks.wrap(model, optimizer, loss_fn)`` once, and ``hooks.batches(dataset, loader,
        epoch)`` each epoch; checkpoints and validation keep the unwrapped model."""
        self.config = config
        self.data_dir = Path(preprocessed_dir) if preprocessed_dir is not None else None
        self.out_dir = Path(out_dir)
        self.split = split
        self.train_dataset = train_dataset
        self.val_paths = val_paths
        self.extra_val = dict(extra_val or {})
        self.extra_state = dict(extra_state or {})
        self.init_state = init_state
        self.hooks = hooks
        self.csv_fields = CSV_FIELDS + [
            f"{name}_dice_{r}" for name in self.extra_val for r in (*REGIONS, "mean")
        ]
        self.ctx = dist_ctx or init_distributed()
        if device is None:
            device = f"cuda:{self.ctx.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.precision = resolve_precision(config.precision, self.device)
        self.progress = progress and self.ctx.is_main
        self.ckpt_dir = self.out_dir / "checkpoints"
        from transmed.transforms.datasets import read_preprocessed_summary

        # Travels in every checkpoint so `predict` prepares raw input exactly like this.
        if preprocess_config is not None:
            self.preprocess_config = dict(preprocess_config)
        elif self.data_dir is None:
            raise TrainingError("no preprocessed data folder and no preprocess_config")
        else:
            self.preprocess_config = read_preprocessed_summary(self.data_dir).get("config", {})
        if train_dataset is None and not split.get("train"):
            raise TrainingError("no training case in the split")
        if self.data_dir is not None and "data_profile" not in self.extra_state:
            self.extra_state["data_profile"] = self._data_profile(split.get("train", []))

    def _data_profile(self, ids: list[str]) -> dict[str, Any] | None:
        """What the training data looked like (skull-stripped or not, slice thickness,
        spacing, volume), so ``predict`` can warn about inputs far from it."""
        from transmed.transforms.preprocess import data_profile
        from transmed.transforms.store import load_record

        paths = [self.data_dir / f"{i}.json" for i in ids]  # type: ignore[operator]
        records = [load_record(p) for p in paths if p.is_file()]
        return data_profile(records) if records else None

    # -- building blocks -------------------------------------------------------------------
    def _build_model(self) -> torch.nn.Module:
        kwargs = dict(self.config.model_kwargs)
        if self.config.deep_supervision:
            kwargs["deep_supervision"] = True
        try:
            model = create_model(self.config.model, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"model {self.config.model!r}: {exc}") from None
        model.set_grad_checkpointing(self.config.grad_checkpointing)
        return model.to(self.device)

    def _paths(self, ids: list[str]) -> list[Path]:
        paths = [self.data_dir / f"{i}.npz" for i in ids]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise TrainingError(f"preprocessed case(s) missing: {missing[:5]}")
        return paths

    def _state(self, model, optimizer, scheduler, scaler, epoch, best, history) -> dict[str, Any]:
        module = model.module if hasattr(model, "module") else model
        return {
            "model": module.state_dict(),
            "model_config": module.config,
            "train_config": self.config.model_dump(mode="json"),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            # the τ these weights were trained at: inference must use it (models are built at
            # the constructor's τ, 30, and dynamic convolution mixes its kernels by it)
            "dynamic_temperature": temperature_schedule(
                epoch, self.config.temperature_epochs, self.config.temperature_start,
                self.config.temperature_end,
            ),
            "best_dice": best,
            "history": history,
            "torch_rng": torch.get_rng_state(),
            "split": self.split,
            "preprocess_config": self.preprocess_config,
            **self.extra_state,
        }

    # -- the loop --------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        cfg, ctx = self.config, self.ctx
        torch.manual_seed(cfg.seed)
        model = self._build_model()
        if self.init_state is not None and not resume:
            try:
                model.load_state_dict(self.init_state)
            except RuntimeError as exc:
                raise ConfigError(f"the initial weights do not fit {cfg.model}: {exc}") from None
        if self.train_dataset is None:
            train_paths = self._paths(self.split["train"])
            val_paths = self._paths(self.split.get("val", []))
        else:
            val_paths = list(self.val_paths or [])
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * cfg.iters_per_epoch
        scheduler = build_scheduler(
            optimizer, total, int(cfg.warmup_epochs * cfg.iters_per_epoch), cfg.schedule
        )
        scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda"
        )
        start_epoch, best, history = 0, -math.inf, []
        if resume:
            ckpt = load_checkpoint(self.ckpt_dir / "latest.pt", self.device)
            if ckpt["train_config"] != cfg.model_dump(mode="json"):
                raise ConfigError(
                    f"{self.ckpt_dir / 'latest.pt'}: was trained with another config; "
                    "resume with the run's own config.json"
                )
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best_dice"], ckpt["history"]
            torch.set_rng_state(ckpt["torch_rng"])
            if ctx.is_main:  # drop rows of an epoch that was cut off before its checkpoint
                self._rewrite_csv(history)
        if ctx.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        module = model.module if ctx.enabled else model
        loss_fn = build_loss(cfg)
        if self.hooks is not None:
            model, optimizer, loss_fn = self.hooks.wrap(model, optimizer, loss_fn)
        per_rank = cfg.iters_per_epoch * cfg.batch_size
        if self.train_dataset is not None:
            dataset = self.train_dataset
            if len(dataset) < per_rank * ctx.world_size:
                raise TrainingError(
                    f"the training dataset has {len(dataset)} samples per epoch, the config "
                    f"needs {per_rank * ctx.world_size}"
                )
        else:
            dataset = PatchDataset(
                train_paths, cfg.patch_size, per_rank * ctx.world_size, cfg.foreground_prob,
                cfg.augment_config(), cfg.seed,
            )  # fmt: skip
        mine = Subset(dataset, range(ctx.rank, per_rank * ctx.world_size, ctx.world_size))
        writer = self._writer() if ctx.is_main else None
        bar = progress_bar(total=total, initial=start_epoch * cfg.iters_per_epoch,
                   disable=not self.progress, desc=f"train {cfg.model}", unit="step",
                   dynamic_ncols=True)  # fmt: skip
        nonfinite_total = sum(int(h.get("nonfinite_steps", 0)) for h in history)
        last_val: dict[str, float] = {}
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            dataset.set_epoch(epoch)
            temperature = temperature_schedule(
                epoch, cfg.temperature_epochs, cfg.temperature_start, cfg.temperature_end
            )
            set_dynamic_temperature(module, temperature)
            loader = DataLoader(
                mine, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                drop_last=True,
            )  # fmt: skip
            if self.hooks is not None:
                loader = self.hooks.batches(mine, loader, epoch)
            model.train()
            losses, nonfinite, consecutive = [], 0, 0
            for batch in loader:
                x = batch["image"].to(self.device)  # (B, 4, *patch)
                y = batch["target"].to(self.device)  # (B, 3, *patch)
                optimizer.zero_grad(set_to_none=True)
                with autocast(self.device, self.precision):
                    out = model(x)
                    out = [o.float() for o in out] if isinstance(out, list) else out.float()
                    loss = loss_fn(out, y)
                if not self._all_finite(loss):
                    nonfinite, consecutive = nonfinite + 1, consecutive + 1
                    if consecutive >= cfg.max_nonfinite:
                        raise TrainingError(
                            f"{consecutive} consecutive non-finite losses at epoch {epoch}: "
                            "lower the learning rate or use fp32"
                        )
                    bar.update(1)  # the step is skipped: no update, the schedule waits

                    continue
                consecutive = 0
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", dice=last_val.get("val_dice_mean", "-"))
            nonfinite_total += nonfinite
            last_epoch = epoch == cfg.epochs - 1
            row: dict[str, Any] = {
                "epoch": epoch, "step": (epoch + 1) * cfg.iters_per_epoch,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": scheduler.get_last_lr()[0], "temperature": temperature,
                "nonfinite_steps": nonfinite,
            }  # fmt: skip
            if ctx.is_main and val_paths and ((epoch + 1) % cfg.val_every == 0 or last_epoch):
                last_val = validate(module, val_paths, cfg, self.precision)
                row.update(last_val)
                for name, paths in self.extra_val.items():
                    extra = validate(module, paths, cfg, self.precision)
                    row.update({k.replace("val_", f"{name}_", 1): v for k, v in extra.items()})
                bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                                dice=f"{last_val['val_dice_mean']:.3f}")  # fmt: skip
            row["epoch_time_s"] = time.perf_counter() - t0
            history.append(row)
            if ctx.is_main:
                self._log(row, writer)
                state = self._state(module, optimizer, scheduler, scaler, epoch, best, history)
                score = row.get("val_dice_mean")
                if score is not None and score > best and _finite_model(module):
                    best = score
                    state["best_dice"] = best
                    save_checkpoint(self.ckpt_dir / "best.pt", state)
                save_checkpoint(self.ckpt_dir / "latest.pt", state)
                if last_epoch:
                    save_checkpoint(self.ckpt_dir / "final.pt", state)
            ctx.barrier()
        bar.close()
        if writer is not None:
            writer.close()
        return TrainResult(self.out_dir, best, len(history), nonfinite_total)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether every rank's loss is finite: all ranks skip a step together, or none
        does (one rank skipping its backward would leave the others waiting in all-reduce)."""
        ok = torch.isfinite(loss.detach()).to(torch.int32)
        if self.ctx.enabled:
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    def _writer(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; tolerate a trimmed install
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    def _rewrite_csv(self, history: list[dict[str, Any]]) -> None:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.csv_fields, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in self.csv_fields})
        from transmed.io.atomic import atomic_write_text

        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())

    def _log(self, row: dict[str, Any], writer: Any) -> None:
        path = self.out_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.csv_fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.csv_fields})
        if writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, row["step"])
            writer.flush()


def write_run_files(out_dir: Path, config: TrainConfig, split: dict, source: Path) -> None:
    """config.json and split.json of a run (atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json({**config.model_dump(mode="json"), "data": str(source)}, out_dir / "config.json")
    write_json(split, out_dir / "split.json")


def read_run_config(out_dir: Path) -> tuple[TrainConfig, dict, Path]:
    """The config, split and data source of an existing run (for --resume)."""
    cfg_path, split_path = out_dir / "config.json", out_dir / "split.json"
    if not cfg_path.is_file() or not split_path.is_file():
        raise ConfigError(f"{out_dir}: not a training run (no config.json/split.json) to resume")
    data = json.loads(cfg_path.read_text())
    source = Path(data.pop("data"))
    return TrainConfig(**data).stored(), json.loads(split_path.read_text()), source
