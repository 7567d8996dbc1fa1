"""Callbacks that Lightning does not ship: run summary, LoRA export, non-finite guard,
image writer for `lightning predict`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from draft_lightning.errors import ConfigError


class RunSummary(Callback):
    """At the end of fit, print the validation reward at the first and last evaluation and
    where the TensorBoard logs are, so a run ends with its answer on the terminal."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        history = getattr(pl_module, "eval_history", [])
        if history:
            (first_step, first), (last_step, last) = history[0], history[-1]
            rank_zero_info(
                f"val/reward: {first['val/reward']:.4f} at step {first_step} -> "
                f"{last['val/reward']:.4f} at step {last_step}"
            )
        if trainer.logger is not None and trainer.logger.log_dir:
            rank_zero_info(f"TensorBoard logs: {trainer.logger.log_dir}")
            rank_zero_info(f"  tensorboard --logdir {trainer.logger.save_dir}")


def run_dir(trainer: Trainer) -> Path:
    """Where a run's artefacts go: the logger's version folder, else the root dir."""
    if trainer.logger is not None and trainer.logger.log_dir:
        return Path(trainer.logger.log_dir)
    return Path(trainer.default_root_dir)


class LoraExport(Callback):
    """Export the trained adapter in diffusers format at every checkpoint and at the end:
    `<log_dir>/lora/step=<N>/pytorch_lora_weights.safetensors` and `<log_dir>/lora/last/`,
    loadable with `pipe.load_lora_weights(dir)`.

    Only rank 0 writes and nothing here waits on other ranks, so saving cannot hang a job.

    Args:
        dirname: folder under the run directory.
        keep_steps: keep one `step=<N>` export per checkpoint (else only `last`).
    """

    def __init__(self, dirname: str = "lora", keep_steps: bool = True) -> None:
        self.dirname = dirname
        self.keep_steps = keep_steps

    def export(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        if trainer.global_rank != 0:
            return
        from draft_lightning.models import save_lora

        root = run_dir(trainer) / self.dirname
        pipeline = pl_module.family.pipeline_class  # SDXL adapters load into the SDXL pipeline
        if self.keep_steps:
            save_lora(pl_module.unet, root / f"step={step}", pipeline_class=pipeline)
        save_lora(pl_module.unet, root / "last", pipeline_class=pipeline)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.export(trainer, pl_module, checkpoint["global_step"])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module, trainer.global_step)


class NonFiniteError(RuntimeError):
    """Too many consecutive optimiser steps had a non-finite loss or gradient."""


class NonFiniteGuard(Callback):
    """Skip the optimiser step when the loss or any LoRA gradient is NaN or inf.

    The gradients are set to None, so AdamW leaves the weights and its moments untouched.
    The check runs after DDP has averaged the gradients and its verdict is reduced across
    ranks, so every rank skips together (skipping on one rank alone would hang DDP).
    Skips are logged as `train/skipped_steps` (cumulative); after `patience` in a row the
    run stops with one line, its last checkpoint untouched.

    Args:
        patience: consecutive skipped steps after which the run stops.
    """

    def __init__(self, patience: int = 10) -> None:
        if patience < 1:
            raise ConfigError(f"NonFiniteGuard patience={patience} must be >= 1")
        self.patience = patience
        self.skipped = 0
        self.in_a_row = 0

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        bad = torch.zeros((), device=pl_module.device)
        if grads:
            bad = bad + (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float()
        loss = getattr(pl_module, "last_loss", None)
        if loss is not None:
            bad = bad + (~torch.isfinite(loss)).float()
        bad = trainer.strategy.reduce(bad, reduce_op="max")
        if bad.item() == 0:  # one host sync per step, the price of a consistent verdict
            self.in_a_row = 0
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=True)
            return
        for p in params:
            p.grad = None
        self.skipped += 1
        self.in_a_row += 1
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True)
        rank_zero_warn(
            f"non-finite loss or gradient at step {trainer.global_step}: optimiser step skipped "
            f"({self.in_a_row} in a row, {self.skipped} in total)"
        )
        if self.in_a_row >= self.patience:
            raise NonFiniteError(
                f"{self.in_a_row} consecutive steps had a non-finite loss or gradient (up to "
                f"step {trainer.global_step}); stopping. The last checkpoint is intact; lower "
                "the learning rate or check the reward"
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict["skipped"]
        self.in_a_row = state_dict["in_a_row"]


class ImageWriter(BasePredictionWriter):
    """`lightning predict` output: one PNG per (prompt, seed) and a JSONL manifest with the
    prompt, seed, file, adapter weights and reward scores of each image.

    Files are written atomically; the manifest is built as `manifest.jsonl.partial` and
    renamed at the end, so a finished manifest always matches the images on disk.

    Args:
        output_dir: where the images go (default: `<log_dir>/predictions`).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def folder(self, trainer: Trainer) -> Path:
        folder = Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def manifest(self, trainer: Trainer) -> Path:
        suffix = "" if trainer.world_size == 1 else f".rank{trainer.global_rank}"
        return self.folder(trainer) / f"manifest{suffix}.jsonl"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        partial = self.manifest(trainer).with_suffix(".jsonl.partial")
        partial.unlink(missing_ok=True)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        from torchvision.io import encode_png

        folder = self.folder(trainer)
        adapters = adapter_description(pl_module)
        lines = []
        for i, (prompt, seed) in enumerate(
            zip(prediction["prompts"], prediction["seeds"], strict=True)
        ):
            name = f"{batch_idx:05d}_{i:02d}_seed{seed}.png"
            pixels = (prediction["images"][i] * 255).round().clamp(0, 255).to(torch.uint8)
            write_atomically(folder / name, encode_png(pixels).numpy().tobytes())
            rewards = {k: float(v[i]) for k, v in prediction["rewards"].items()}
            entry = {"prompt": prompt, "seed": int(seed), "file": name, "adapters": adapters}
            lines.append(json.dumps({**entry, "rewards": rewards}))
        partial = self.manifest(trainer).with_suffix(".jsonl.partial")
        with open(partial, "a", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        manifest = self.manifest(trainer)
        partial = manifest.with_suffix(".jsonl.partial")
        if partial.exists():
            os.replace(partial, manifest)
            rank_zero_info(f"predictions: {manifest.parent}")


def adapter_description(pl_module: LightningModule) -> list[dict[str, Any]]:
    if getattr(pl_module, "mix", None):
        return [
            {"path": path, "weight": weight}
            for path, weight in zip(pl_module.mix, pl_module.mix_weights, strict=True)
        ]
    return [{"path": "trained", "weight": getattr(pl_module, "lora_scale", 1.0)}]


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
