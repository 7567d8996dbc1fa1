"""A callback that records, per optimiser step and per evaluation, what the experiments plot:
reward, reward queries, training wall time (validation excluded) and gradient norm, and at
every evaluation the held-out judge's score (`val/heldout/judge`) where the module has one."""

from __future__ import annotations

import time
from collections.abc import Callable

from lightning.pytorch import Callback


class Recorder(Callback):
    """`measure(module)`, if given, adds its values to every evaluation's record (outside
    the timed training steps)."""

    def __init__(self, measure: Callable[[object], dict] | None = None) -> None:
        self.measure = measure
        self.train: list[dict] = []
        self.val: list[dict] = []
        self.train_seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._start
        grad_norm = trainer.callback_metrics.get("train/grad_norm")
        self.train.append(
            {
                "step": trainer.global_step,
                "queries": pl_module.reward_queries,
                "seconds": self.train_seconds,
                "reward": float(pl_module.last_train_scores["reward"].float().mean()),
                "grad_norm": None if grad_norm is None else float(grad_norm),
            }
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        step, values = pl_module.eval_history[-1]
        self.val.append(
            {
                "step": step,
                "queries": pl_module.reward_queries,
                "seconds": self.train_seconds,
                "reward": values["val/reward"],
                "diversity": values["val/diversity"],
                "judge": values.get("val/heldout/judge"),
                **(self.measure(pl_module) if self.measure is not None else {}),
            }
        )
