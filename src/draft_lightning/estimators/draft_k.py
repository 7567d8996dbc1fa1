"""DRaFT-K: only the last K sampling steps are differentiated."""

from __future__ import annotations

from dataclasses import dataclass

from draft_lightning.errors import ConfigError
from draft_lightning.estimators.base import Estimator


@dataclass(frozen=True)
class DraftK(Estimator):
    """DRaFT-K: the first steps run without autograd; only the last `k` are differentiated.

    Args:
        k: number of final sampling steps to backpropagate through (the paper's best: 1).
    """

    k: int = 1

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"estimator k={self.k} must be >= 1")

    def check(self, num_steps: int) -> None:
        if self.k > num_steps:
            raise ConfigError(f"estimator k={self.k} exceeds sampling.num_steps={num_steps}")

    def sample(self, sampler, noise, text, rng):
        grad_from = sampler.num_steps - self.k
        return sampler.sample(noise, text, grad_from=grad_from, rng=rng).latents
