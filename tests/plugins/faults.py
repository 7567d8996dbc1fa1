"""Rewards that fail on purpose, to test what a run does about it."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch import Callback

from draft_lightning.rewards import Brightness


class RaiseOnRank(Brightness):
    """Brightness that raises on one global rank at one training call (counted from 0).

    Args:
        rank: the global rank that fails.
        call: the training-time call that fails on that rank.
    """

    def __init__(self, rank: int = 1, call: int = 2) -> None:
        super().__init__(name="brightness")
        self.fail_rank = rank
        self.fail_call = call
        self.calls = 0

    def forward(self, images, prompts):
        if images.requires_grad:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            if rank == self.fail_rank and self.calls == self.fail_call:
                raise RuntimeError(f"injected failure on rank {self.fail_rank}")
            self.calls += 1
        return super().forward(images, prompts)


class KillAtStep(Callback):
    """SIGKILL this process as the batch after optimiser step `step` begins (its checkpoint,
    written at the end of the previous batch, is on disk): a preemption without warning.

    Args:
        step: the global step at which the process dies.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(Callback):
    """Send this process a signal at a chosen point of step `step`: as the step's batch begins
    ("step": the signal arrives mid-step), as the validation after that step begins its
    first batch ("validation"), as the base model's validation before training does
    ("sanity", step 0), as the trainer sets up ("setup", step 0: the version folder exists)
    or has set up ("fit_start": the model placed, the checkpoint restored), or as training
    ends ("train_end": before the final checkpoint and LoRA export) or the run summary is
    printed ("fit_end"), after the last step's checks.

    Args:
        step: the global step (optimiser steps taken) at which to send it.
        where: "step", "validation", "sanity", "setup", "fit_start", "train_end" or "fit_end".
        signal_name: e.g. "SIGTERM" or "SIGINT".
    """

    def __init__(self, step: int, where: str = "step", signal_name: str = "SIGTERM") -> None:
        self.step = step
        self.where = where
        self.signum = getattr(signal, signal_name)
        self.sent = False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def _send_at(self, trainer, where: str) -> None:
        if self.where == where and trainer.global_step == self.step:
            self._send()

    def setup(self, trainer, pl_module, stage) -> None:
        self._send_at(trainer, "setup")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._send_at(trainer, "fit_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._send_at(trainer, "step")

    def on_train_end(self, trainer, pl_module) -> None:
        self._send_at(trainer, "train_end")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._send_at(trainer, "fit_end")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn != "fit" or trainer.global_step != self.step:
            return
        if self.where == ("sanity" if trainer.sanity_checking else "validation"):
            self._send()


class NaNScores(Brightness):
    """Brightness with NaN scores on purpose: on chosen training calls (counted from 0,
    every image), and, with `validation`, on every other image of each evaluation.

    Args:
        train_calls: the training-time calls whose scores are all NaN.
        validation: NaN for the even-numbered images of every evaluation batch.
    """

    def __init__(self, train_calls: list[int] | None = None, validation: bool = False) -> None:
        super().__init__(name="brightness")
        self.train_calls = set(train_calls or [])
        self.validation = validation
        self.calls = 0

    def forward(self, images, prompts):
        scores = super().forward(images, prompts)
        if images.requires_grad:
            call, self.calls = self.calls, self.calls + 1
            if call in self.train_calls:
                scores = scores * float("nan")
        elif self.validation:
            nan = torch.zeros_like(scores)
            nan[::2] = float("nan")
            scores = scores + nan
        return scores


class SignalWhenBuilt(Brightness):
    """Brightness that sends this process a signal as it is constructed: the signal arrives
    while the command builds its classes (the model loads next), before any Trainer exists.

    Args:
        signal_name: e.g. "SIGTERM" or "SIGINT".
    """

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(name="brightness")
        os.kill(os.getpid(), getattr(signal, signal_name))
