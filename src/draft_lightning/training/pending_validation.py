"""A validation the run owed when it stopped is done first when it resumes."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class PendingValidation(Callback):
    """Record in each checkpoint whether its step's validation was still to come, and run it
    first when a run resumes from that checkpoint.

    The checkpoint callback writes `last.ckpt` at the end of a step, before that step's
    validation. A run killed in between (SIGKILL, or SIGTERM/SIGINT mid-validation, see
    StopOnSignal) resumes after the step, and Lightning skips the validation: the reward
    curve, the run summary and the best-checkpoint choice would never see that step. With
    this callback the resumed run validates it before its first training step, as the
    uninterrupted run did after it.
    """

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.validated_step: int | None = None  # the last step whose validation finished
        self.pending_step: int | None = None  # read from the checkpoint resumed from

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.trainer = trainer

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        if not trainer.sanity_checking:
            self.validated_step = trainer.global_step
        elif base_validation(trainer):  # a full sanity check is the base model's validation
            self.validated_step = 0

    def owed_step(self) -> int | None:
        """The step whose validation a checkpoint written now would still owe, if any."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit" or not trainer.enable_validation:
            return None
        step = trainer.global_step
        if self.validated_step == step:
            return None
        if trainer.sanity_checking:
            return 0 if base_validation(trainer) else None
        if trainer.validating:  # stopped mid-validation
            return step
        epoch_loop = trainer.fit_loop.epoch_loop
        due = epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)
        return step if due else None

    def state_dict(self) -> dict[str, Any]:
        return {"validation_owed_at_step": self.owed_step()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending_step = state_dict.get("validation_owed_at_step")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step, self.pending_step = self.pending_step, None
        if step is None or step != trainer.global_step:
            return
        rank_zero_info(f"Resuming: step {step}'s validation did not finish; validating it first")
        # What the training loop does when a validation is due (training_epoch_loop.py).
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        val_loop.restarting = False  # a fresh validation, not the continuation of one
        trainer.validating = True
        val_loop.run()
        trainer.training = True


def base_validation(trainer: Trainer) -> bool:
    """A sanity check over the whole validation set is the base model's validation."""
    return trainer.num_sanity_val_steps == float("inf")
