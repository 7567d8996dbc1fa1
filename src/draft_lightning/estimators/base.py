"""The estimator interface: a rule for where the reward gradient flows through the chain.

Every estimator runs the same sampling loop (samplers/base.py) and differs only in which
steps are differentiated. Each returns the latents to decode, `copies` per prompt, stacked
copy-major: [copy 0 of every prompt, copy 1 of every prompt, ...].
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from draft_lightning.randomness import StepRandomness
from draft_lightning.samplers.base import Sampler
from draft_lightning.samplers.conditioning import Conditioning


class Estimator(ABC):
    """A rule for where gradient flows; small, frozen and chosen in YAML by class_path."""

    @property
    def copies(self) -> int:
        """Decoded samples per prompt (DRaFT-LV scores several re-noised copies)."""
        return 1

    @property
    def steps_through_chain(self) -> bool:
        """Whether the differentiated model calls are sampling steps (what DRaFT+'s penalty
        observes); False for an estimator that calls the model off the chain."""
        return True

    def check(self, num_steps: int) -> None:
        """Refuse settings that cannot work with `num_steps` sampling steps (before loading)."""
        return None

    @abstractmethod
    def sample(
        self,
        sampler: Sampler,
        noise: torch.Tensor,
        text: Conditioning,
        rng: StepRandomness,
    ) -> torch.Tensor:
        """Latents to decode, with gradient wherever this estimator lets it flow."""
