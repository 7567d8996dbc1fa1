"""DRaFT-LV: the last step differentiated on n re-noised copies of a no-grad sample."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draft_lightning.errors import ConfigError
from draft_lightning.estimators.base import Estimator


@dataclass(frozen=True)
class DraftLV(Estimator):
    """DRaFT-LV: the last step differentiated on `n` re-noised copies of the sample.

    Sample x0 without gradient, re-noise it `n` times with the forward process to the noise
    level of the last sampling step, and denoise each copy with one differentiable step.

    Args:
        n: number of re-noised copies per prompt (the paper: 2).
        include_base_sample: also score the ordinary DRaFT-1 sample (last step
            differentiated) and average it with the n copies; implementations differ here.
        renoise_steps: re-noise to the start of the last `renoise_steps` sampling steps and
            redo those steps with gradient; 1 (the paper) is one differentiable step.
    """

    n: int = 2
    include_base_sample: bool = False
    renoise_steps: int = 1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"estimator n={self.n} must be >= 1")
        if self.renoise_steps < 1:
            raise ConfigError(f"estimator renoise_steps={self.renoise_steps} must be >= 1")

    @property
    def copies(self) -> int:
        return self.n + int(self.include_base_sample)

    def check(self, num_steps: int) -> None:
        if self.renoise_steps > num_steps:
            raise ConfigError(
                f"estimator renoise_steps={self.renoise_steps} exceeds "
                f"sampling.num_steps={num_steps}"
            )

    def sample(self, sampler, noise, text, rng):
        last = sampler.num_steps - 1
        base = sampler.sample(
            noise,
            text,
            grad_from=last if self.include_base_sample else sampler.num_steps,
            rng=rng,
        ).latents
        start = sampler.num_steps - self.renoise_steps
        x0 = base.detach().repeat(self.n, *([1] * (base.dim() - 1)))
        shape = tuple(x0.shape[1:])
        eps = rng.randn(x0.shape[0], shape, dtype=x0.dtype, copies=self.n).to(x0.device)
        renoised = sampler.renoise(x0, eps, start)
        copies = sampler.sample(
            renoised, text.repeat(self.n), grad_from=start, rng=rng, start=start
        ).latents
        return torch.cat([base, copies]) if self.include_base_sample else copies
