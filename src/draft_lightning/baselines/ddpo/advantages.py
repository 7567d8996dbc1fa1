"""DDPO's advantages: rewards normalised per prompt by running statistics.

Why per prompt: some prompts are simply easier to score high on; normalising each prompt's
rewards by that prompt's own recent mean and std makes the advantage say "better than
usual for this prompt" rather than "an easy prompt". Until a prompt has `min_count` rewards
in its buffer, the statistics of the whole (global) batch stand in (as in DDPO).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import torch

EPS = 1e-6  # added to the std, so a prompt whose rewards are all equal gets advantage 0


def batch_normalise(rewards: torch.Tensor) -> torch.Tensor:
    """(r - mean) / (std + eps) over the whole batch (population std)."""
    values = rewards.detach().double()
    std = values.std(unbiased=False) if values.numel() > 1 else values.new_zeros(())
    return ((values - values.mean()) / (std + EPS)).to(rewards.dtype)


class PerPromptStats:
    """The last `buffer_size` rewards of every prompt seen, and advantages from them.

    The state is plain Python (prompt -> list of floats), so it goes into checkpoints that
    load with `torch.load(weights_only=True)`.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16) -> None:
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque[float]] = {}

    def advantages(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Record this batch's rewards, then normalise each by its prompt's statistics
        (buffer including this batch), or by the batch's while the buffer holds fewer than
        `min_count`."""
        values = rewards.detach().double().cpu()
        if len(prompts) != values.numel():
            raise ValueError(f"{len(prompts)} prompts for {values.numel()} rewards")
        batch_mean = values.mean()
        batch_std = values.std(unbiased=False) if values.numel() > 1 else values.new_zeros(())
        out = torch.empty_like(values)
        rows: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            rows.setdefault(prompt, []).append(i)
        for prompt, index in rows.items():
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            # A non-finite reward gets a non-finite advantage (NonFiniteGuard skips that
            # step) but stays out of the buffer, which would otherwise carry it for many steps.
            buffer.extend(v for v in values[index].tolist() if math.isfinite(v))
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                history = torch.tensor(list(buffer), dtype=torch.float64)
                mean, std = history.mean(), history.std(unbiased=False)
            out[index] = (values[index] - mean) / (std + EPS)
        return out.to(device=rewards.device, dtype=torch.float32)

    def state_dict(self) -> dict:
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": {prompt: list(buffer) for prompt, buffer in self.buffers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the buffers (the configured sizes stay: a resumed run may change them)."""
        self.buffers = {
            prompt: deque((float(v) for v in values), maxlen=self.buffer_size)
            for prompt, values in state["buffers"].items()
        }
