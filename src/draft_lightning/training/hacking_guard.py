"""Catch reward hacking while it happens: the training reward keeps rising while a held-out
reward (or the diversity of the samples) falls by more than its noise.

A reward model is a proxy; optimised hard enough, the fine-tuned model finds what the proxy
likes and the intended quality drops (DRaFT's paper warns that, left alone, training
collapses onto it). No single curve shows this: `val/reward` goes up either way. Rewards the
run never trains on (`model.heldout_rewards`) and `val/diversity` tell the two apart.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from draft_lightning.errors import ConfigError
from draft_lightning.training.stop_signals import save_last_checkpoint

GuardAction = Literal["warn", "stop", "record", "off"]
HACKING_TAG = "val/hacking"
GUARDED_TAG = "val/guarded_reward"  # what the best checkpoint is chosen by (docs/checkpoints.md)
REWARD_TAG = "val/reward"
DIVERSITY_TAG = "val/diversity"


@rank_zero_only
def _say(line: str) -> None:
    logging.getLogger("lightning.pytorch").warning(line)


@rank_zero_only
def _info(line: str) -> None:
    logging.getLogger("lightning.pytorch").info(line)


class HackingGuard(Callback):
    """Flag reward hacking: the training reward rising while a held-out reward falls.

    At every validation, a watched quantity (each held-out reward, and `val/diversity`)
    diverges when the training reward is higher than when that quantity was at its best so
    far, while the quantity has fallen below that best by more than `noise` standard errors
    of the difference (the spread over the validation prompts and seeds). Hacking is flagged
    after `patience` diverging validations in a row.

    Logs `val/hacking` (1 from the `patience`-th such validation on, 0 otherwise) and
    `val/guarded_reward`: the selection criterion (`val/reward`, or `selection`'s weighted
    sum) at a validation where nothing diverges, NaN at one where something does, so the
    best checkpoint (`best_checkpoint.monitor: val/guarded_reward`) is never one of those.
    When hacking is flagged it prints one line and, per `action`:

    - `warn`: nothing more; the run goes on.
    - `stop`: writes `last.ckpt` (which `--ckpt_path last` resumes) and stops the run.
    - `record`: no line; only the logged flag.
    - `off`: nothing is ever flagged; `val/guarded_reward` is the criterion at every
      validation (the plain rule, through the same key).

    A watched quantity whose noise cannot be told (a held-out reward over one sample,
    diversity without two prompts that have two seeds each) is not watched. The guard's
    history survives resume (its state is in the checkpoint).

    Args:
        action: warn, stop, record or off.
        patience: validations in a row that must diverge before hacking is flagged.
        noise: how many standard errors of the difference a fall must exceed.
        min_fall: the smallest fall that counts, in the quantity's own units, whatever its
            noise: a near-certain score (a judge's probability of 0.9999 on every sample)
            has a standard error near 0, so without it a fall in the fourth decimal counts.
        watch_diversity: also watch `val/diversity` (mode collapse), not only held-out rewards.
        selection: the criterion of `val/guarded_reward` as weights of logged validation
            scalars, e.g. {"val/reward": 1.0, "val/heldout/pickscore": 0.5}; None means
            `val/reward` alone.
    """

    def __init__(
        self,
        action: GuardAction = "warn",
        patience: int = 2,
        noise: float = 2.0,
        min_fall: float = 0.0,
        watch_diversity: bool = True,
        selection: dict[str, float] | None = None,
    ) -> None:
        if action not in ("warn", "stop", "record", "off"):
            raise ConfigError(f"hacking_guard.action={action!r} must be warn, stop, record or off")
        if patience < 1:
            raise ConfigError(f"hacking_guard.patience={patience} must be >= 1")
        if not (noise >= 0 and math.isfinite(noise)):
            raise ConfigError(f"hacking_guard.noise={noise} must be a finite number >= 0")
        if not (min_fall >= 0 and math.isfinite(min_fall)):
            raise ConfigError(f"hacking_guard.min_fall={min_fall} must be a finite number >= 0")
        selection = dict(selection) if selection is not None else {REWARD_TAG: 1.0}
        bad = [tag for tag in selection if not tag.startswith("val/")]
        if not selection or bad:
            raise ConfigError(
                f"hacking_guard.selection={selection} must weight validation scalars "
                '(e.g. {"val/reward": 1.0, "val/heldout/<name>": 0.5})'
            )
        self.action = action
        self.patience = patience
        self.noise = noise
        self.min_fall = min_fall
        self.watch_diversity = watch_diversity
        self.selection = selection
        self.records: list[dict[str, Any]] = []  # one per full validation during fit
        self.streak = 0  # validations in a row that diverged
        self.flagged_steps: list[int] = []  # steps with val/hacking = 1

    # --- the verdict, from the evaluations alone (no Lightning): unit-testable ---------------

    def observe(self, step: int, values: dict[str, float], errors: dict[str, float]) -> dict:
        """Add one validation (its `val/*` means and their standard errors) and return its
        verdict: {"diverging": {tag: (peak step, peak value)}, "hacking": bool, "new": bool
        (hacking flagged at this validation for the first time in this streak),
        "guarded": the selection value or NaN}."""
        watched = {
            tag: (float(values[tag]), float(errors.get(tag, math.nan)))
            for tag in values
            if tag.startswith("val/heldout/") or (self.watch_diversity and tag == DIVERSITY_TAG)
        }
        record = {"step": step, "reward": float(values[REWARD_TAG]), "watched": watched}
        diverging = {} if self.action == "off" else self.diverging(record)
        self.records.append(record)
        self.streak = self.streak + 1 if diverging else 0
        hacking = self.streak >= self.patience
        if hacking:
            self.flagged_steps.append(step)
        criterion = sum(w * float(values.get(t, math.nan)) for t, w in self.selection.items())
        return {
            "diverging": diverging,
            "hacking": hacking,
            "new": self.streak == self.patience,
            "guarded": math.nan if diverging else criterion,
        }

    def diverging(self, record: dict[str, Any]) -> dict[str, tuple[int, float]]:
        """The watched tags that fell beyond noise (and by at least min_fall) from their best
        earlier value while the
        training reward is higher than it was then: {tag: (that step, that value)}."""
        found = {}
        for tag, (value, error) in record["watched"].items():
            earlier = [r for r in self.records if _finite(r["watched"].get(tag, (math.nan,))[0])]
            if not earlier or not _finite(value) or not _finite(error):
                continue
            peak = max(earlier, key=lambda r: r["watched"][tag][0])
            peak_value, peak_error = peak["watched"][tag]
            if not _finite(peak_error):
                continue
            threshold = max(self.noise * math.hypot(error, peak_error), self.min_fall)
            if record["reward"] > peak["reward"] and value < peak_value - threshold:
                found[tag] = (peak["step"], peak_value)
        return found

    def message(self, record: dict[str, Any], verdict: dict) -> str:
        """The one line printed when hacking is flagged."""
        tag, (peak_step, peak_value) = next(iter(verdict["diverging"].items()))
        then = next(r for r in self.records if r["step"] == peak_step)
        now_value = record["watched"][tag][0]
        others = len(verdict["diverging"]) - 1
        more = f" (and {others} more)" if others else ""
        consequence = {
            "warn": "training goes on",
            "stop": "stopping; last.ckpt resumes",
        }.get(self.action, "")
        return (
            f"hacking_guard: reward hacking suspected at step {record['step']}: val/reward rose "
            f"{then['reward']:.4f} -> {record['reward']:.4f} since step {peak_step} while "
            f"{tag}{more} fell {peak_value:.4f} -> {now_value:.4f} (beyond {self.noise:g} "
            f"standard errors) for {self.streak} validations; {consequence}; the best "
            "checkpoint skips these validations"
        )

    # --- Lightning ----------------------------------------------------------------------------

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the module logged this evaluation (on_validation_epoch_end) and before the
        # best checkpoint reads the metrics (Lightning runs ModelCheckpoint callbacks last).
        if trainer.state.fn != "fit":
            return
        if trainer.sanity_checking and trainer.num_sanity_val_steps != float("inf"):
            return  # a partial pass over the validation set is no evaluation
        history = getattr(pl_module, "eval_history", [])
        evaluation = getattr(pl_module, "last_evaluation", None) or {}
        if not history or REWARD_TAG not in history[-1][1]:
            return
        step, values = history[-1]
        if any(r["step"] == step for r in self.records):
            return  # already judged (a resumed run validating the same step again)
        verdict = self.observe(step, values, evaluation.get("standard_errors", {}))
        metrics = {HACKING_TAG: float(verdict["hacking"]), GUARDED_TAG: verdict["guarded"]}
        values.update(metrics)  # for the run summary and the model card
        for tag, value in metrics.items():
            trainer.callback_metrics[tag] = torch.tensor(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step)
        if verdict["new"] and self.action in ("warn", "stop"):
            _say(self.message(self.records[-1], verdict))
        if verdict["new"] and self.action == "stop" and not trainer.sanity_checking:
            save_last_checkpoint(trainer)  # where `--ckpt_path last` finds it
            trainer.should_stop = True

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The run summary's line on hacking (after RunSummary's, which the CLI adds first)."""
        if self.action == "off" or not self.records:
            return
        if self.flagged_steps:
            steps = ", ".join(str(s) for s in self.flagged_steps)
            _info(f"val/hacking: flagged at steps {steps}; the best checkpoint skips them")
        else:
            _info(f"val/hacking: not flagged in {len(self.records)} validations")

    def state_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "streak": self.streak,
            "flagged_steps": self.flagged_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))
        self.streak = int(state_dict.get("streak", 0))
        self.flagged_steps = list(state_dict.get("flagged_steps", []))


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
