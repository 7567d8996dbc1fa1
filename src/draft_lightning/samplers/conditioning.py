"""What the denoiser is told about the prompts: the same for every model family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Conditioning:
    """The denoiser's keyword inputs for a batch of prompts.

    `cond` holds the inputs for the prompts (batched tensors, batch first; nested dicts are
    allowed, e.g. SDXL's `added_cond_kwargs`). `uncond` holds the same inputs for the
    unconditional (empty) prompt when the model is guided by classifier-free guidance; None
    means one denoiser call per step (guidance 1, or a guidance-distilled model such as
    FLUX.1-dev, whose guidance value is one of the inputs). Each family's prompt encoder
    builds it; the sampler only batches it, so it never asks which family it runs.
    """

    cond: dict[str, Any]
    uncond: dict[str, Any] | None = None
    copies: int = 1  # how many copies of each prompt the batch holds (copy-major)

    def repeat(self, copies: int) -> Conditioning:
        """The same prompts `copies` times, copy-major ([c0 prompts..., c1 prompts...])."""
        if copies == 1:
            return self
        return Conditioning(
            _repeat(self.cond, copies), _repeat(self.uncond, copies), self.copies * copies
        )

    def with_uncond_first(self) -> dict[str, Any]:
        """Unconditional and conditional inputs in one batch (uncond rows first)."""
        return _concatenate(self.uncond, self.cond)


def _repeat(value, copies: int):
    """Tensors (or a dict of them) stacked `copies` times along the batch dimension."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _repeat(v, copies) for key, v in value.items()}
    return value.repeat(copies, *([1] * (value.dim() - 1)))


def _concatenate(first, second):
    if isinstance(second, dict):
        return {key: _concatenate(first[key], value) for key, value in second.items()}
    return torch.cat([first, second])
