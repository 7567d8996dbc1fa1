"""AlignProp's random truncation: DRaFT-K with K drawn once per trajectory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from draft_lightning.errors import ConfigError
from draft_lightning.estimators.base import Estimator


@dataclass(frozen=True)
class RandomTruncation(Estimator):
    """AlignProp: DRaFT-K with K drawn at random once per trajectory (per sample).

    Args:
        distribution: "uniform" draws K uniformly in [low, high]; "gaussian" draws
            round(N(mean, std)) clipped to [low, high].
        low: smallest K (>= 1).
        high: largest K; None means sampling.num_steps.
        mean: mean of the Gaussian (None: midpoint of [low, high]).
        std: standard deviation of the Gaussian.
    """

    distribution: Literal["uniform", "gaussian"] = "uniform"
    low: int = 1
    high: int | None = None
    mean: float | None = None
    std: float = 5.0

    def __post_init__(self) -> None:
        if self.distribution not in ("uniform", "gaussian"):
            raise ConfigError(
                f"estimator distribution={self.distribution!r} must be 'uniform' or 'gaussian'"
            )
        if self.low < 1:
            raise ConfigError(f"estimator low={self.low} must be >= 1")
        if self.high is not None and self.high < self.low:
            raise ConfigError(f"estimator high={self.high} is below low={self.low}")
        if self.std <= 0:
            raise ConfigError(f"estimator std={self.std} must be > 0")

    def check(self, num_steps: int) -> None:
        if (self.high or self.low) > num_steps:
            raise ConfigError(
                f"estimator K range [{self.low}, {self.high}] exceeds "
                f"sampling.num_steps={num_steps}"
            )

    def draw_k(self, batch: int, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        """One truncation length per trajectory, as a CPU int64 tensor of shape [batch] (drawn
        for the global batch; `sample` keeps this rank's rows)."""
        high = self.high if self.high is not None else num_steps
        if self.distribution == "uniform":
            return torch.randint(self.low, high + 1, (batch,), generator=generator)
        mean = self.mean if self.mean is not None else (self.low + high) / 2
        k = torch.randn(batch, generator=generator, dtype=torch.float64) * self.std + mean
        return k.round().clamp(self.low, high).long()

    def sample(self, sampler, noise, text, rng):
        global_batch = noise.shape[0] * rng.world_size
        k = rng.mine(self.draw_k(global_batch, sampler.num_steps, rng.generator))
        grad_from = sampler.num_steps - k
        return sampler.sample(noise, text, grad_from=grad_from, rng=rng).latents
