"""The last lines of a run: its answer (the validation reward before and after) and where
its logs are."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class RunSummary(Callback):
    """At the end of fit, print the validation reward before and after, and the logs.

    The validation reward at the first and last evaluation and where the TensorBoard logs
    are, so a run ends with its answer on the terminal."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        history = getattr(pl_module, "eval_history", [])
        if history:
            (first_step, first), (last_step, last) = history[0], history[-1]
            rank_zero_info(
                f"val/reward: {first['val/reward']:.4f} at step {first_step} -> "
                f"{last['val/reward']:.4f} at step {last_step}"
            )
            for tag in (t for t in last if t.startswith("val/heldout/")):  # never trained on
                rank_zero_info(f"{tag}: {first.get(tag, float('nan')):.4f} -> {last[tag]:.4f}")
        if trainer.logger is not None and trainer.logger.log_dir:
            rank_zero_info(f"TensorBoard logs: {trainer.logger.log_dir}")
            rank_zero_info(f"  tensorboard --logdir {trainer.logger.save_dir}")
