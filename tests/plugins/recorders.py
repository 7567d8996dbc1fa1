"""Callbacks that record what each rank trained on, for distributed tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lightning.pytorch import Callback


class RecordSamples(Callback):
    """Append (rank, step, prompt, hash of that sample's x_T) per training sample to
    <folder>/rank<r>.jsonl.

    Args:
        folder: where the files go.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        prompts = batch["prompts"]
        noise = pl_module.step_randomness(batch_idx).randn(
            len(prompts), pl_module.pipeline.latent_shape
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as file:
            for prompt, row in zip(prompts, noise, strict=True):
                digest = hashlib.sha1(row.numpy().tobytes()).hexdigest()
                entry = {"rank": trainer.global_rank, "step": trainer.global_step}
                file.write(json.dumps({**entry, "prompt": prompt, "noise": digest}) + "\n")


class RecordRewards(Callback):
    """Append each step's training reward to <folder>/rewards.jsonl, flushed at once (a killed
    run keeps what it logged, unlike buffered TensorBoard events).

    Args:
        folder: where the file goes.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        reward = float(pl_module.last_train_scores["reward"].mean())
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"step": trainer.global_step, "reward": reward, "prompts": batch["prompts"]}
        with open(self.folder / "rewards.jsonl", "a") as file:
            file.write(json.dumps(line) + "\n")
