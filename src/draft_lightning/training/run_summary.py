"""The last lines of a run: its answer (the validation reward before and after, and the
picture of it) and where its logs are."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from draft_lightning.training.before_after import BeforeAfter


class RunSummary(Callback):
    """At the end of fit, print the validation reward before and after, and the logs.

    The validation reward at the first and last evaluation (the base model's and the last,
    across resumes: the history is in the checkpoints), any evaluation with non-finite
    rewards, the before/after picture (training/before_after.py) and where the TensorBoard
    logs are, so a run ends with its answer on the terminal."""

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
            nonfinite = [(s, int(v["val/nonfinite"])) for s, v in history if v.get("val/nonfinite")]
            if nonfinite:
                where = ", ".join(f"{count} at step {step}" for step, count in nonfinite)
                rank_zero_info(
                    f"val/nonfinite: non-finite validation rewards ({where}); those evaluations' "
                    "val/reward is NaN and none of them is a best checkpoint"
                )
        for callback in trainer.callbacks:
            if isinstance(callback, BeforeAfter) and callback.written is not None:
                rank_zero_info(f"before/after picture: {callback.written}")
        if trainer.logger is not None and trainer.logger.log_dir:
            rank_zero_info(f"TensorBoard logs: {trainer.logger.log_dir}")
            rank_zero_info(f"  tensorboard --logdir {trainer.logger.save_dir}")
