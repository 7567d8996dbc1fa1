"""The terminal's progress bar: optimiser steps of max_steps with the reward beside them.

Lightning's bar counts batches of an epoch ("Epoch 0/-2" when a run is bounded by max_steps,
as every run here is, and a count restarting after a resume) and shows the logger's version
as `v_num`. Runs here are measured in optimiser steps, so the bar is too.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar in optimiser steps of max_steps, with the reward.

    Counts steps up to `max_steps` (resumed runs included), described as "train", with the
    progress-bar metrics (train/reward, train/loss, val/reward) and without `v_num`. The
    CLI adds it unless the trainer has a progress bar of its own or
    `enable_progress_bar: false`."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'train':{len(self.validation_description)}}"

    @property
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else super().total_train_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.max_steps and trainer.max_steps > 0):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # a resumed run starts mid-epoch
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
