"""ReFL (ImageReward): one differentiable step at a random late step, scored on its x0."""

from __future__ import annotations

from dataclasses import dataclass

from draft_lightning.errors import ConfigError
from draft_lightning.estimators.base import Estimator
from draft_lightning.randomness import StepRandomness


@dataclass(frozen=True)
class ReFL(Estimator):
    """ReFL (ImageReward): one differentiable step at a random late step, its x0 decoded.

    Sample without gradient to a random step among the last `window`, take one
    differentiable step there and decode its direct x0 prediction.

    One step index is drawn per global batch (shared by all ranks), as in the reference
    implementation.

    Args:
        window: the step is drawn uniformly from the last `window` sampling steps.
    """

    window: int = 10

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"estimator window={self.window} must be >= 1")

    def check(self, num_steps: int) -> None:
        if self.window > num_steps:
            raise ConfigError(
                f"estimator window={self.window} exceeds sampling.num_steps={num_steps}"
            )

    def draw_step(self, num_steps: int, rng: StepRandomness) -> int:
        return rng.shared_randint(num_steps - self.window, num_steps)

    def sample(self, sampler, noise, text, rng):
        index = self.draw_step(sampler.num_steps, rng)
        result = sampler.sample(noise, text, grad_from=index, rng=rng, stop=index + 1)
        return result.pred_x0
