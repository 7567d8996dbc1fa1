"""TensorBoard beyond scalars: image grids, reward histograms, a custom-scalars layout and
hyperparameters with final metrics. Lightning logs scalars itself; this adds what a reward
fine-tuning run needs to show improvement and the first signs of reward hacking."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from draft_lightning.errors import ConfigError
from draft_lightning.evaluation.image_grid import captioned_grid


def tensorboard(trainer: Trainer):
    """The SummaryWriter of the first TensorBoard logger, on rank 0; else None."""
    if trainer.global_rank != 0:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class TensorBoardMonitor(Callback):
    """Log `val/images` (one captioned cell per validation prompt and seed, in a fixed
    order, at every evaluation including the base model at step 0), histograms of
    per-sample rewards (`train/reward_hist`, `val/reward_hist`, and per reward), a
    custom-scalars layout with train and val curves of each reward side by side, and
    hyperparameters with the final validation metrics.

    Args:
        cell_size: each grid cell is resized to this many pixels square.
        max_images: at most this many cells per grid (the first in (prompt, seed) order).
        columns: cells per grid row; None means one column per validation seed.
        histogram_every_n_steps: how often to log training reward histograms.
    """

    def __init__(
        self,
        cell_size: int = 128,
        max_images: int = 32,
        columns: int | None = None,
        histogram_every_n_steps: int = 10,
    ) -> None:
        if cell_size < 16 or max_images < 1 or (columns is not None and columns < 1):
            raise ConfigError(
                f"TensorBoardMonitor cell_size={cell_size} (>= 16), max_images={max_images} "
                f"(>= 1), columns={columns} (>= 1 or null) out of range"
            )
        self.cell_size = cell_size
        self.max_images = max_images
        self.columns = columns
        self.histogram_every_n_steps = histogram_every_n_steps
        self._layout_written = False

    # --- layout and hparams ------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or self._layout_written:
            return
        names = ["reward", *(f"reward/{n}" for n in pl_module.reward.part_names)]
        # Chart tags are regular expressions in TensorBoard: anchor them, or "train/reward"
        # would also draw every train/reward/<name> curve.
        charts = {
            name: ["Multiline", [f"^train/{name}$", f"^val/{name}$"]]
            for name in dict.fromkeys(names)
        }
        charts["diversity"] = ["Multiline", ["^val/diversity$"]]
        charts["loss and gradient"] = ["Multiline", ["^train/loss$", "^train/grad_norm$"]]
        writer.add_custom_scalars({"draft-lightning": charts})
        self._layout_written = True

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        history = getattr(pl_module, "eval_history", [])
        if not history or trainer.global_rank != 0:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                final = {f"final/{k}": v for k, v in history[-1][1].items()}
                logger.log_hyperparams(run_hparams(trainer, pl_module), metrics=final)

    # --- images and histograms ------------------------------------------------------------

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = tensorboard(trainer)
        evaluation = getattr(pl_module, "last_evaluation", None)
        if writer is None or not evaluation or not evaluation["prompts"]:
            return
        if trainer.sanity_checking and trainer.num_sanity_val_steps != float("inf"):
            return  # a partial sanity pass is not the base model's evaluation
        stage, step = evaluation["stage"], evaluation["step"]
        writer.add_image(f"{stage}/images", self.grid(evaluation), step)
        for name in evaluation["scores"][0]:
            values = torch.tensor([s[name] for s in evaluation["scores"]])
            writer.add_histogram(f"{stage}/{name}_hist", values, step)

    def grid(self, evaluation: dict[str, Any]) -> torch.Tensor:
        count = min(self.max_images, len(evaluation["prompts"]))
        cells = torch.stack(evaluation["thumbnails"][:count]).float() / 255
        cells = torch.nn.functional.interpolate(
            cells, size=(self.cell_size, self.cell_size), mode="bilinear", antialias=True
        )
        captions = [
            f"{scores['reward']:.3f} seed {seed}\n{prompt}"
            for prompt, seed, scores in zip(
                evaluation["prompts"][:count],
                evaluation["seeds"][:count],
                evaluation["scores"][:count],
                strict=True,
            )
        ]
        columns = self.columns or len(set(evaluation["seeds"]))
        return captioned_grid(cells, captions, columns=min(columns, count))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        writer = tensorboard(trainer)
        scores = getattr(pl_module, "last_train_scores", None)
        if writer is None or scores is None:
            return
        if trainer.global_step % self.histogram_every_n_steps:
            return
        for name, values in scores.items():
            writer.add_histogram(f"train/{name}_hist", values.float().cpu(), trainer.global_step)


def run_hparams(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """The settings that distinguish runs, flat and TensorBoard-friendly."""
    estimator = getattr(pl_module, "estimator", None)  # DraftModule's; DDPO has none
    params: dict[str, Any] = {"method": type(pl_module).__name__}
    if estimator is not None:
        params["estimator"] = type(estimator).__name__
        params |= {f"estimator.{k}": v for k, v in vars(estimator).items()}
    params |= {f"sampling.{k}": v for k, v in vars(pl_module.sampling).items()}
    params |= {
        f"lora.{k}": str(v) if isinstance(v, tuple) else v for k, v in vars(pl_module.lora).items()
    }
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    if optimizer is not None:
        params["optimizer"] = type(optimizer).__name__
        params["lr"] = optimizer.param_groups[0]["lr"]
    params |= {
        "kl_coeff": getattr(pl_module, "kl_coeff", None),
        "seed": pl_module.seed,
        "reward": pl_module.reward.name,
    }
    params["world_size"] = trainer.world_size
    return {k: v for k, v in params.items() if v is not None}
