"""The best checkpoint: never an evaluation with non-finite scores or one the hacking guard
flagged; its adapter exported beside the others as `lora/best/`."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from draft_lightning.training.lora_export import LoraExport


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoint, never a non-finite or flagged evaluation, exported as lora/best/.

    Lightning's ModelCheckpoint, except that an evaluation whose monitored value is not a
    finite number is never kept (Lightning reads NaN as the worst score, which still wins
    while it has fewer than `save_top_k` files: the first evaluation of a run or after a
    resume). Two things make it non-finite: a NaN or inf reward in the evaluation (see
    Evaluator), and the hacking guard's `val/guarded_reward`, NaN at every evaluation where
    a held-out reward or diversity diverged from the training reward. Each new best also
    exports its adapter as `<log_dir>/lora/best/` (when the run exports adapters), so the
    file a user loads is the selected one, not the last."""

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not bool(torch.isfinite(torch.as_tensor(current)).all()):
            return False
        return super().check_monitor_top_k(trainer, current)

    def _update_best_and_save(self, current, trainer, monitor_candidates) -> None:
        super()._update_best_and_save(current, trainer, monitor_candidates)
        for callback in trainer.callbacks:
            if isinstance(callback, LoraExport):
                callback.export_as(trainer, trainer.lightning_module, trainer.global_step, "best")

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, so checkpoints written before this class resume its state.
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)
