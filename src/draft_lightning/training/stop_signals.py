"""SIGTERM and SIGINT outside SLURM: checkpoint at a step boundary, say how to resume, and
exit with the shell's status for the signal (143, 130), never 0."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(BaseException):
    """A run stopped by a signal. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way swallows it; the command turns it into one line and the
    exit status 128 + signal number.

    Args:
        signum: the signal that stopped the run.
        step: the optimiser step the checkpoint holds (None: no checkpoint was written).
        checkpoint: the file written, or None.
        found_by_last: whether `--ckpt_path last` finds the checkpoint.
        when: "step" (a checkpoint at a step boundary), "second" (a second signal before
            the step ended: no new checkpoint), "resumed" (before the first step of a resumed
            run: the checkpoint it resumed from is intact), "start" (before training began:
            nothing written) or "end" (after the last step: the run is complete).
    """

    def __init__(
        self,
        signum: int,
        step: int | None,
        checkpoint: Path | None,
        found_by_last: bool = True,
        when: str = "step",
    ) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        self.found_by_last = found_by_last
        self.when = when

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal killed


class StopOnSignal(Callback):
    """Stop `fit` cleanly on SIGTERM (Kubernetes, systemd, cloud preemption, `kill`) or SIGINT
    (Ctrl+C), outside SLURM (there SlurmRequeue and Lightning's own handling stay).

    The handler only records the signal. The step under way finishes; at its end (a step
    boundary: the last micro-batch of an accumulated step) every rank writes `last.ckpt`,
    which `--ckpt_path last` resumes exactly, and the run stops. A signal during validation
    abandons the validation: the checkpoint then holds the state before it (the same one the
    checkpoint callback writes at the end of a step) and the resumed run validates that step
    first (PendingValidation). A signal during setup stops the run before its first step
    (or the base model's validation): with a step-0 checkpoint, or, resuming, with the
    checkpoint it resumed from left as it was. Once the last step is done the run ends with
    `last.ckpt` (and so `lora/last`) at that step; a signal from then on lets the final
    validation, export and summary finish and the run still stops with the signal's status.
    A second signal stops at once, without a checkpoint: the last one written stays intact.
    Lightning, left alone, exits 0 on SIGTERM without a checkpoint and turns Ctrl+C into
    exit 1.

    Args:
        enabled: handle SIGTERM and SIGINT this way (false: Lightning's handling).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: int | None = None
        self.active = False
        self.previous_handlers: dict[int, Any] = {}
        self.loops_after_step: dict | None = None
        self.save_state_after_step = False
        self.final_checkpoint: Path | None = None  # last.ckpt as the run ended

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.active:  # left installed by Lightning's teardown after the run: as before
            signal.signal(signum, self.previous_handlers.get(signum) or signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received is not None:  # the second signal: no more waiting
            raise RunInterrupted(signum, None, None, when="second")
        self.received = signum  # only a flag: anything else here runs amid arbitrary code

    def _install(self) -> None:
        # Lightning registers its own SIGTERM handler after setup (chaining ours); hooks that
        # run later take the signal back, so Lightning neither exits 0 nor ignores it.
        for signum in STOP_SIGNALS:
            previous = signal.signal(signum, self._handler)
            self.previous_handlers.setdefault(signum, previous)

    def _restore(self) -> None:
        # Lightning's teardown may put this handler back afterwards (it saved it as the one
        # it replaced): inactive, it then hands the signal to the previous handler.
        for signum, previous in self.previous_handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self.active = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        environment = trainer._accelerator_connector.cluster_environment
        if not self.enabled or stage != "fit" or isinstance(environment, SLURMEnvironment):
            return
        self.received = None
        self.final_checkpoint = None
        self.previous_handlers = {}
        self.active = True
        self._install()

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active:
            self._install()
            # Before the first step: a stop now resumes from step 0 with fresh loops.
            self.loops_after_step = loops_state(trainer)
            self._stop_if_signalled_in_setup(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active:
            self._install()
            if self.loops_after_step is None:
                self.loops_after_step = loops_state(trainer)
            self._stop_if_signalled_in_setup(trainer)

    def _stop_if_signalled_in_setup(self, trainer: Trainer) -> None:
        """A signal during setup (model placement, checkpoint restore, the logger's folder),
        where Lightning's own handler also sits: stop before any work."""
        if not self._stop_requested(trainer):
            return
        if trainer.ckpt_path is not None:  # resuming: what it resumed from is still the state
            signum = self.received if self.received is not None else signal.SIGTERM
            raise RunInterrupted(signum, trainer.global_step, None, when="resumed")
        self._stop(trainer, after_step=True)  # step 0, fresh loops

    def _stop_requested(self, trainer: Trainer) -> bool:
        # Every rank learns whether any rank got the signal (one all-reduce), so all save.
        return trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active or trainer.fit_loop.epoch_loop._should_accumulate():
            return  # mid accumulation: not a step boundary
        if self._stop_requested(trainer):
            self._stop(trainer, after_step=False)
        self.loops_after_step = loops_state(trainer)  # in case a validation follows

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.active and trainer.state.fn == "fit" and self._stop_requested(trainer):
            self._stop(trainer, after_step=True)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.save_state_after_step and self.loops_after_step is not None:
            # Mid-validation: the loops as they were when the step ended, so the resumed run
            # starts after that step (and PendingValidation redoes its validation).
            checkpoint["loops"] = copy.deepcopy(self.loops_after_step)

    def _stop(self, trainer: Trainer, after_step: bool) -> None:
        signum = self.received if self.received is not None else signal.SIGTERM
        self.save_state_after_step = after_step
        try:
            path = save_last_checkpoint(trainer)
        finally:
            self.save_state_after_step = False
        raise RunInterrupted(signum, trainer.global_step, path, found_by_last(trainer))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active:
            return
        # The run ends with last.ckpt at its last step, its validation done (Lightning's
        # checkpoint callback keeps the one of the last every_n_train_steps, written before
        # that step's validation), so lora/last, exported at the end, matches it, and a
        # signal from here to exit leaves a run that `--ckpt_path last` finds complete.
        if self.received is not None or last_checkpoint_callback(trainer) is not None:
            self.final_checkpoint = save_last_checkpoint(trainer)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if self.active:
            self._restore()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.active:
            return
        path = self.final_checkpoint
        done = RunInterrupted(
            signal.SIGTERM, trainer.global_step, path, found_by_last(trainer), when="end"
        )
        for signum in STOP_SIGNALS:  # a signal from here to the command's exit
            owner = getattr(self.previous_handlers.get(signum), "__self__", None)
            if isinstance(owner, CommandSignals):
                owner.finished = done
        self._restore()
        if self.received is not None:  # after the last step's checks: the run is complete
            if path is None:  # the signal came after on_train_end: write last.ckpt now
                path = save_last_checkpoint(trainer)
            raise RunInterrupted(
                self.received, trainer.global_step, path, found_by_last(trainer), when="end"
            )


class CommandSignals:
    """SIGTERM and SIGINT for the whole command (cli.main), outside the part of `fit` where
    StopOnSignal waits for a step boundary: while the config is parsed and the model loads,
    and in validate, test and predict, a signal stops the command at once (nothing of a run
    is written yet, or what is written is written atomically); after a finished `fit` it
    says the run is complete. Either way one line and 143/130, not a traceback or exit 0.
    """

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.finished: RunInterrupted | None = None  # set by StopOnSignal as fit ends

    def _handler(self, signum: int, frame: Any) -> None:
        if self.finished is not None:
            done = self.finished
            raise RunInterrupted(signum, done.step, done.checkpoint, done.found_by_last, "end")
        raise RunInterrupted(signum, None, None, when="start")

    def __enter__(self) -> CommandSignals:
        from lightning.fabric.plugins.environments.slurm import _is_srun_used

        if _is_srun_used():  # (SLURMEnvironment.detect() also warns where srun merely exists)
            return self  # SlurmRequeue and Lightning's own handling (slurm.py)
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


def last_checkpoint_callback(trainer: Trainer) -> ModelCheckpoint | None:
    """The checkpoint callback that keeps `last.ckpt`, if any."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            return callback
    return None


def save_last_checkpoint(trainer: Trainer) -> Path:
    """Write `last.ckpt` now, through the checkpoint callback that keeps it: the path it
    records is in the checkpoint, so the resumed run's callback overwrites that file instead
    of starting a `last-v1.ckpt`, which `--ckpt_path last` would not find."""
    callback = last_checkpoint_callback(trainer)
    path = last_checkpoint_path(trainer)
    if callback is None:
        trainer.save_checkpoint(path, weights_only=False)
        return path
    callback.last_model_path = str(path)  # before saving: it is part of the saved state
    trainer.save_checkpoint(path, weights_only=False)  # the whole state, always
    callback._last_global_step_saved = trainer.global_step  # its bookkeeping: no second save
    callback._last_checkpoint_saved = str(path)
    return path


def loops_state(trainer: Trainer) -> dict:
    """Lightning's loop counters as a checkpoint holds them (a copy)."""
    return copy.deepcopy(trainer._checkpoint_connector._get_loops_state_dict())


def found_by_last(trainer: Trainer) -> bool:
    """`--ckpt_path last` looks through the TensorBoard versions (cli.resume_last) or, without a
    logger, in the one checkpoint folder; under another logger only in a new version."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return trainer.logger is None or isinstance(trainer.logger, TensorBoardLogger)


def last_checkpoint_path(trainer: Trainer) -> Path:
    """Where `--ckpt_path last` looks: the `last` file of the checkpoint callback that keeps
    one, else `<run>/checkpoints/last.ckpt`."""
    from draft_lightning.training.run_files import run_dir

    callback = last_checkpoint_callback(trainer)
    if callback is not None:
        metrics = callback._monitor_candidates(trainer)  # for a templated last name
        return Path(callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST))
    return run_dir(trainer) / "checkpoints" / "last.ckpt"
