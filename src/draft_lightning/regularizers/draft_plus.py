"""DRaFT+'s regulariser against reward hacking and lost diversity: the mean squared distance
between the adapted and the base model's guided predictions over the differentiated steps.

The base model is the same denoiser with its adapters switched off, so the penalty costs one
extra no-grad denoiser call per differentiated step and no second copy of the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from draft_lightning.models.lora import adapters_disabled
from draft_lightning.samplers.base import Sampler
from draft_lightning.samplers.conditioning import Conditioning


class BaseDeviation:
    """Accumulates ||prediction - base prediction||^2 over one training step's differentiated
    (step, sample) pairs; a sampler's step observer (see Sampler.observing)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.count: torch.Tensor | int = 0
        self.steps: list[int] = []

    def __call__(
        self,
        sampler: Sampler,
        latents: torch.Tensor,
        index: int,
        text: Conditioning,
        prediction: torch.Tensor,
        in_window: torch.Tensor | None,
    ) -> None:
        with torch.no_grad(), adapters_disabled(sampler.denoiser):
            base = sampler.guided(latents, index, text)
        dims = tuple(range(1, prediction.dim()))
        squared = (prediction.float() - base.float()).pow(2).mean(dim=dims)
        if in_window is None:
            self.total = self.total + squared.sum()
            self.count = self.count + squared.numel()
        else:
            self.total = self.total + (squared * in_window).sum()
            self.count = self.count + in_window.sum()
        self.steps.append(index)

    def mean(self) -> torch.Tensor:
        if not self.steps:
            raise RuntimeError("no differentiated step was tracked")
        return self.total / self.count


@contextmanager
def tracking_base_deviation(sampler: Sampler) -> Iterator[BaseDeviation]:
    """DRaFT+'s penalty of the sampling done inside the block."""
    with sampler.observing(BaseDeviation()) as deviation:
        yield deviation
