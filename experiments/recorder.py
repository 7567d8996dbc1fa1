"""A callback that records, per optimiser step and per evaluation, what the experiments plot:
reward, reward queries, training wall time (validation excluded) and gradient norm, and at
every evaluation the held-out judge's score (`val/heldout/judge`) where the module has one.

Its records travel in the run's checkpoints (with the commit, code fingerprint and start
time of the run and the wall time spent so far), so a run cut short and resumed reports what
an uninterrupted run would: the same records and the first start; its wall time is this
process's plus the earlier ones' up to their last checkpoint (work lost after it is not
counted)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Callback


class Recorder(Callback):
    """`measure(module)`, if given, adds its values to every evaluation's record (outside
    the timed training steps). `commit` is the code's commit, kept with the records."""

    def __init__(
        self, measure: Callable[[object], dict] | None = None, commit: str = "", code: str = ""
    ) -> None:
        self.measure = measure
        self.commit = commit  # the run's commit as it started, kept across a resume
        self.code = code  # the code's fingerprint: a resume needs the same
        self.started = time.time()
        self.train: list[dict] = []
        self.val: list[dict] = []
        self.train_seconds = 0.0
        self._start = 0.0
        self._wall_before = 0.0  # wall seconds of the processes this run resumed from
        self._clock = time.perf_counter()  # this process's share counts from here
        self.resumed = False

    def wall_seconds(self) -> float:
        return self._wall_before + time.perf_counter() - self._clock

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

    def state_dict(self) -> dict[str, Any]:
        return {
            "train": self.train,
            "val": self.val,
            "train_seconds": self.train_seconds,
            "started": self.started,
            "commit": self.commit,
            "code": self.code,
            "wall_seconds": self.wall_seconds(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("code") != self.code:  # run.train checks this before resuming
            raise ValueError(f"records of code {state_dict.get('code')}, not {self.code}")
        self.train = list(state_dict["train"])
        self.val = list(state_dict["val"])
        self.train_seconds = float(state_dict["train_seconds"])
        self.started = float(state_dict["started"])
        self.commit = state_dict["commit"]
        self._wall_before = float(state_dict["wall_seconds"])
        self.resumed = True
