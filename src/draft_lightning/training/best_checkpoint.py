"""Model selection that never picks an evaluation with non-finite scores."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that a non-finite monitored value (an evaluation
    in which some reward was NaN or inf, see Evaluator) is never kept as a best checkpoint.
    Lightning reads NaN as the worst score, which still wins while fewer than `save_top_k`
    checkpoints are kept: the first evaluation after a resume, or the first of a run.
    """

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not torch.isfinite(torch.as_tensor(current)).all():
            return False
        return super().check_monitor_top_k(trainer, current)

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, so checkpoints written before this class resume its state.
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)
