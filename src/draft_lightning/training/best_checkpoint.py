"""The best checkpoint, chosen among the evaluations the hacking guard did not flag, and
its adapter exported beside the others as `lora/best/`."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from draft_lightning.training.lora_export import LoraExport


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoint, never one the hacking guard flagged, exported as lora/best/.

    Lightning's ModelCheckpoint, except that an evaluation whose monitored value is not a
    finite number is never kept (Lightning would keep it while it has fewer than
    `save_top_k` files): the hacking guard's `val/guarded_reward` is NaN at every
    evaluation where a held-out reward or diversity diverged from the training reward.
    Each new best also exports its adapter as `<log_dir>/lora/best/` (when the run exports
    adapters), so the file a user loads is the selected one, not the last."""

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not bool(torch.isfinite(current).all()):
            return False
        return super().check_monitor_top_k(trainer, current)

    def _update_best_and_save(self, current, trainer, monitor_candidates) -> None:
        super()._update_best_and_save(current, trainer, monitor_candidates)
        for callback in trainer.callbacks:
            if isinstance(callback, LoraExport):
                callback.export_as(trainer, trainer.lightning_module, trainer.global_step, "best")
