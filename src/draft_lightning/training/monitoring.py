"""What a run shows beyond Lightning's scalars, through any logger (training/logger_media.py):
captioned validation grids, per-sample reward histograms, one record of the run's settings
with its final metrics, speed, memory and the adapter's size, and TensorBoard's
custom-scalars layout. Enough to see a run improve, and to see the first signs of reward
hacking."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from draft_lightning.errors import ConfigError
from draft_lightning.evaluation.image_grid import evaluation_grid
from draft_lightning.models.sharding import full_tensor
from draft_lightning.training.hacking_guard import HackingGuard
from draft_lightning.training.logger_media import log_histogram, log_image, log_run_settings
from draft_lightning.training.run_settings import final_metric_tags, run_settings

# The settings TensorBoard's HParams table opens with (it shows five).
HEADLINE = ("estimator", "lr", "lora.rank", "reward", "model")
# ru_maxrss is in kibibytes on Linux, in bytes on macOS.
MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


class RunMonitor(Callback):
    """Images, histograms, run settings and diagnostics, to every logger the run has.

    - `val/images` at every evaluation (the base model at step 0 included): one cell per
      validation prompt and seed in a fixed order, captioned with its reward, seed and
      whole prompt (wrapped; one longer than `prompt_lines` lines is shortened in the
      middle);
    - per-sample reward histograms, `train/reward_hist` and `val/reward_hist` (and one per
      reward when a WeightedSum has several);
    - `train/steps_per_second`, `train/peak_memory_gib`, `train/lora_delta_norm` (how far
      the adapter moves the weights) and `train/lora_update_norm` (how far one step moves
      the adapter);
    - one record of the run's settings (estimator, K/n, model, reward, sampling, LoRA,
      learning rate, batch, ...) whose metrics are the final `val/*` values, in place of
      Lightning's automatic one (the data module's arguments);
    - for TensorBoard, a custom-scalars layout (docs/tensorboard.md).

    Args:
        cell_size: each grid cell is resized to this many pixels square.
        max_images: at most this many cells per grid (the first in (prompt, seed) order).
        columns: cells per grid row; None means one column per validation seed.
        prompt_lines: caption lines a prompt may take before it is shortened in the middle.
        histogram_every_n_steps: how often to log training reward histograms.
    """

    def __init__(
        self,
        cell_size: int = 128,
        max_images: int = 32,
        columns: int | None = None,
        prompt_lines: int = 4,
        histogram_every_n_steps: int = 10,
    ) -> None:
        if cell_size < 16 or max_images < 1 or (columns is not None and columns < 1):
            raise ConfigError(
                f"monitor cell_size={cell_size} (>= 16), max_images={max_images} "
                f"(>= 1), columns={columns} (>= 1 or null) out of range"
            )
        if prompt_lines < 1 or histogram_every_n_steps < 1:
            raise ConfigError(
                f"monitor prompt_lines={prompt_lines} and histogram_every_n_steps="
                f"{histogram_every_n_steps} must be >= 1"
            )
        self.cell_size = cell_size
        self.max_images = max_images
        self.columns = columns
        self.prompt_lines = prompt_lines
        self.histogram_every_n_steps = histogram_every_n_steps
        self.settings_logged_to: str | None = None  # the log folder that has the record
        self._step_started: float | None = None
        self._adapter_before: list[torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"settings_logged_to": self.settings_logged_to}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.settings_logged_to = state_dict.get("settings_logged_to")

    # --- the run's settings and the layout, once --------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning logs the module's and the data module's saved arguments at the start of
        # every run (for TensorBoard, a first hparams record that hides any later one): the
        # record of this run's settings is written here instead.
        pl_module._log_hyperparams = False
        if trainer.datamodule is not None:
            trainer.datamodule._log_hyperparams = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the optimiser is built (its learning rate is a setting), before any metric.
        log_dir = str(getattr(trainer.logger, "log_dir", None))
        if self.settings_logged_to != log_dir:  # a resumed run logging on has its record
            settings = run_settings(trainer, pl_module)
            log_run_settings(trainer, settings, final_metric_tags(pl_module), HEADLINE)
            self.settings_logged_to = log_dir
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_custom_scalars(layout(pl_module))

    # --- every training step -------------------------------------------------------------------

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._step_started is None:
            self._step_started = time.perf_counter()
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._adapter_before = [p.detach().clone() for p in pl_module.trainable_parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._adapter_before is None:
            return  # a micro-batch of an accumulated step: the step is not over
        now = time.perf_counter()
        moved = [
            after.detach() - before
            for after, before in zip(
                pl_module.trainable_parameters(), self._adapter_before, strict=True
            )
        ]
        self._adapter_before = None
        update = full_tensor(torch.nn.utils.get_total_norm(moved))  # of every shard
        metrics = {
            "train/steps_per_second": 1.0 / max(now - self._step_started, 1e-9),
            "train/peak_memory_gib": peak_memory_bytes(pl_module.device) / 2**30,
            "train/lora_update_norm": float(update),
            "train/lora_delta_norm": float(pl_module.pipeline.adapter_norm()),
        }
        self._step_started = now  # the next step starts now (data loading counts)
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1)
        self.log_train_histograms(trainer, pl_module)

    def log_train_histograms(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scores = getattr(pl_module, "last_train_scores", None)
        step = trainer.global_step - 1  # the step these samples were scored at
        if scores is None or step % self.histogram_every_n_steps:
            return
        for name in histogram_names(scores):
            log_histogram(trainer, f"train/{name}_hist", scores[name], step)

    # --- every evaluation ------------------------------------------------------------------

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._step_started = None  # evaluation time is not training speed

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        evaluation = getattr(pl_module, "last_evaluation", None)
        if not evaluation or not evaluation["prompts"]:
            return
        if trainer.sanity_checking and trainer.num_sanity_val_steps != float("inf"):
            return  # a partial sanity pass is not the base model's evaluation
        stage, step = evaluation["stage"], evaluation["step"]
        log_image(trainer, f"{stage}/images", self.grid(evaluation), step)
        scores = {
            name: torch.tensor([s[name] for s in evaluation["scores"]])
            for name in evaluation["scores"][0]
        }
        for name in histogram_names(scores):
            log_histogram(trainer, f"{stage}/{name}_hist", scores[name], step)

    def grid(self, evaluation: dict[str, Any]) -> torch.Tensor:
        """[3, H, W] uint8: the evaluation's first `max_images` samples, captioned."""
        return evaluation_grid(
            evaluation, self.cell_size, self.max_images, self.columns, self.prompt_lines
        )


# The name configs and older code know it by.
TensorBoardMonitor = RunMonitor


def histogram_names(scores: dict[str, Any]) -> list[str]:
    """ "reward", each part only when there are several (one part equals the total), and
    each held-out reward ("heldout/<name>")."""
    heldout = [name for name in scores if name.startswith("heldout/")]
    parts = [name for name in scores if name != "reward" and name not in heldout]
    return ["reward", *(parts if len(parts) > 1 else []), *heldout]


def peak_memory_bytes(device: torch.device) -> int:
    """On a GPU, the most memory tensors held during this step; on the CPU, the process's
    peak resident memory so far (what the operating system saw)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_BYTES


def layout(pl_module: LightningModule) -> dict[str, dict[str, list]]:
    """TensorBoard's custom-scalars layout: one chart per question, each quantity on its own
    axis where its scale differs (a gradient norm of 1e-5 beside a loss of 0.5 reads as 0).
    Chart tags are regular expressions: anchored, so "train/reward" does not also draw
    every train/reward/<name> curve."""

    def chart(*tags: str) -> list:
        return ["Multiline", [f"^{tag}$" for tag in tags]]

    parts = list(pl_module.reward.part_names)
    reward = {
        "reward: train (every step) and validation": chart("train/reward", "val/reward"),
        "validation reward": chart("val/reward"),
        "validation reward gain over the base model": chart("val/reward_gain"),
        "reward spread: std over each step's batch": chart("train/reward_std"),
        "validation diversity": chart("val/diversity"),
    }
    heldout = [r.name for r in getattr(pl_module, "heldout_rewards", [])]
    if heldout:
        reward["held-out rewards (never trained on) beside the validation reward"] = chart(
            "val/reward", *(f"val/heldout/{name}" for name in heldout)
        )
    trainer = pl_module._trainer
    if trainer is not None and any(isinstance(c, HackingGuard) for c in trainer.callbacks):
        reward["reward hacking: the guard's flag (1 = flagged)"] = chart("val/hacking")
    if len(parts) > 1:
        for name in parts:
            reward[f"reward/{name}: train and validation"] = chart(
                f"train/reward/{name}", f"val/reward/{name}"
            )
    optimisation = {
        "loss": chart("train/loss"),
        "gradient norm before clipping (use the log-scale button)": chart("train/grad_norm"),
        "learning rate": ["Multiline", ["^lr-"]],  # LearningRateMonitor's lr-<optimizer>
    }
    if getattr(pl_module, "kl_coeff", 0):
        optimisation["DRaFT+ penalty"] = chart("train/kl")
    return {
        "draft-lightning: reward": reward,
        "draft-lightning: optimisation": optimisation,
        "draft-lightning: LoRA adapter": {
            "size: ||scale B A|| over adapted layers": chart("train/lora_delta_norm"),
            "update per step: ||change of the LoRA weights||": chart("train/lora_update_norm"),
        },
        "draft-lightning: speed and memory": {
            "optimiser steps per second": chart("train/steps_per_second"),
            "peak memory (GiB)": chart("train/peak_memory_gib"),
        },
    }
