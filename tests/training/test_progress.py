"""The progress bar counts optimiser steps of max_steps, says "train", and shows the reward
without Lightning's `v_num`."""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from draft_lightning.training.progress import StepProgressBar


class Rewarded(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/reward", 0.5, prog_bar=True)
        return out


def test_bar_counts_steps_of_max_steps_with_the_reward_and_no_version(tmp_path):
    seen = []

    class Spy(StepProgressBar):
        def _update(self, progress_bar_id, current, visible=True, hard=False):
            if progress_bar_id == self.train_progress_bar_id and progress_bar_id is not None:
                seen.append((current, self.progress.tasks[progress_bar_id].total))
            super()._update(progress_bar_id, current, visible, hard)

    bar = Spy()
    trainer = Trainer(
        max_steps=6,
        accumulate_grad_batches=2,  # 12 batches, 6 optimiser steps
        limit_val_batches=0,
        callbacks=[bar],
        default_root_dir=tmp_path,
        enable_model_summary=False,
    )
    trainer.fit(Rewarded())
    assert [current for current, _ in seen][-1] == 6 and {total for _, total in seen} == {6}
    assert "Epoch" not in bar._get_train_description(0)
    metrics = bar.get_metrics(trainer, trainer.lightning_module)
    assert "v_num" not in metrics and metrics["train/reward"] == 0.5
