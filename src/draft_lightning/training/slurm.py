"""SLURM preemption: checkpoint at a step boundary, then requeue the job."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from draft_lightning.errors import ConfigError


class SlurmRequeue(Callback):
    """Checkpoint and requeue a SLURM job that is about to be stopped, at a step boundary.

    SLURM announces the end with a signal (`#SBATCH --signal=SIGUSR1@120`, or
    `scancel --signal=USR1 <job>` by hand). Lightning's own auto-requeue saves the checkpoint
    inside the signal handler, at whatever line each rank happens to be on: under DDP one
    rank enters the checkpoint's collectives while another is inside a different one, and
    the job hangs until SLURM kills it, with neither checkpoint nor requeue (docs/slurm.md
    has the stacks). This handler only records the signal. At the end of the next training
    batch every rank learns whether any rank got it (a one-element all-reduce per step), all
    save `hpc_ckpt_<n>.ckpt` in the default root dir together, rank 0 runs `scontrol
    requeue`, and the run stops. The requeued job resumes from the newest hpc checkpoint
    (Lightning looks for it by itself under SLURM when no ckpt_path is given). Lightning's
    handler is switched off, so SIGTERM stops the run at the next step instead of being
    ignored. Outside SLURM this callback does nothing.

    Args:
        signal_name: the signal SLURM sends (must match `--signal` in the sbatch script).
    """

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        if not hasattr(signal, signal_name):
            raise ConfigError(f"SlurmRequeue signal_name={signal_name!r} is not a signal")
        self.signum = getattr(signal, signal_name)
        self.requested = False
        self.previous_handler: Any = None
        self.active = False

    def _handler(self, signum: int, frame: Any) -> None:
        # Only a flag: anything else here runs in the middle of arbitrary code.
        self.requested = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        # Where Lightning's signal connector reads it (single-device runs included).
        environment = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(environment, SLURMEnvironment):
            return
        environment.auto_requeue = False  # Lightning's in-handler checkpoint off
        self.previous_handler = signal.signal(self.signum, self._handler)
        self.active = True
        rank_zero_info(
            f"SlurmRequeue: on {signal.Signals(self.signum).name}, checkpoint at "
            f"the next step and requeue job {slurm_job_id()}"
        )

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.active or not trainer.strategy.reduce_boolean_decision(
            self.requested, all=False
        ):
            return
        self.requested = False
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank, at the same point of the same step
        requeued = False
        if trainer.is_global_zero:  # never raises: the other ranks wait in the broadcast
            job = slurm_job_id()
            try:
                result = subprocess.run(
                    ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
                )
                requeued, why = result.returncode == 0, result.stderr.strip()
            except (OSError, subprocess.TimeoutExpired) as error:
                why = str(error)
            if requeued:
                rank_zero_info(
                    f"SlurmRequeue: saved {path} at step {trainer.global_step}; requeued {job}"
                )
            else:
                rank_zero_warn(
                    f"SlurmRequeue: saved {path} at step {trainer.global_step}, but `scontrol "
                    f"requeue {job}` failed: {why}; training goes on"
                )
        if trainer.strategy.broadcast(requeued, src=0):
            trainer.should_stop = True

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.active:
            signal.signal(self.signum, self.previous_handler or signal.SIG_DFL)
            self.active = False


def slurm_job_id() -> str:
    """The id `scontrol requeue` takes: `<array job>_<task>` for array jobs."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]
