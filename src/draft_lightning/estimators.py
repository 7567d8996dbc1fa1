"""Where the reward gradient flows through the sampling chain.

Every estimator runs the same DDIM loop (sampling.DDIMSampler) and differs only in which
steps are differentiated. Each returns the latents to decode, `copies` per prompt, stacked
copy-major: [copy 0 of every prompt, copy 1 of every prompt, ...].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from draft_lightning.errors import ConfigError
from draft_lightning.randomness import StepRandomness
from draft_lightning.sampling import DDIMSampler, TextConditioning


class Estimator(ABC):
    """A rule for where gradient flows; small, frozen and chosen in YAML by class_path."""

    @property
    def copies(self) -> int:
        """Decoded samples per prompt (DRaFT-LV scores several re-noised copies)."""
        return 1

    def check(self, num_steps: int) -> None:
        """Refuse settings that cannot work with `num_steps` sampling steps (before loading)."""
        return None

    @abstractmethod
    def sample(
        self,
        sampler: DDIMSampler,
        noise: torch.Tensor,
        text: TextConditioning,
        rng: StepRandomness,
    ) -> torch.Tensor:
        """Latents to decode, with gradient wherever this estimator lets it flow."""


@dataclass(frozen=True)
class Draft(Estimator):
    """Full DRaFT: backpropagate through every sampling step."""

    def sample(self, sampler, noise, text, rng):
        return sampler.sample(noise, text, grad_from=0, rng=rng).latents


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


@dataclass(frozen=True)
class DraftLV(Estimator):
    """DRaFT-LV: sample x0 without gradient, re-noise it `n` times with the forward process to
    the timestep of the last sampling step, and denoise each copy with one differentiable step.

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
        x0 = base.detach().repeat(self.n, 1, 1, 1)
        shape = tuple(x0.shape[1:])
        eps = rng.randn(x0.shape[0], shape, dtype=x0.dtype, copies=self.n).to(x0.device)
        t = torch.tensor([sampler.timesteps[start]])
        renoised = sampler.scheduler.add_noise(x0, eps, t)
        copies = sampler.sample(
            renoised, text.repeat(self.n), grad_from=start, rng=rng, start=start
        ).latents
        return torch.cat([base, copies]) if self.include_base_sample else copies


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


@dataclass(frozen=True)
class ReFL(Estimator):
    """ReFL (ImageReward): sample without gradient to a random step among the last `window`,
    take one differentiable step there and decode its direct x0 prediction.

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
