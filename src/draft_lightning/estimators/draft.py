"""Full DRaFT: the reward gradient flows through every sampling step."""

from __future__ import annotations

from dataclasses import dataclass

from draft_lightning.estimators.base import Estimator


@dataclass(frozen=True)
class Draft(Estimator):
    """Full DRaFT: backpropagate through every sampling step."""

    def sample(self, sampler, noise, text, rng):
        return sampler.sample(noise, text, grad_from=0, rng=rng).latents
