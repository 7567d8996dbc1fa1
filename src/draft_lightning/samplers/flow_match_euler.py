"""Flow matching (SD3 / SD3.5, FLUX.1): stateless schedule, Euler step, re-noising and x0
prediction, and the sampler with a gradient window built from them.

diffusers' convention: x_sigma = (1 - sigma) * x0 + sigma * eps with sigma from 1 (noise) to
0 (image); the model predicts the velocity v ~ eps - x0 and one Euler step is
x + (sigma_next - sigma) * v. diffusers' FlowMatchEulerDiscreteScheduler keeps a step index
between calls, which a DRaFT window (steps re-run with gradients, or started from the
middle of a chain) cannot share; so the schedule comes from the scheduler itself, exactly as
the pipelines ask for it, and the steps are plain functions of their inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from draft_lightning.randomness import StepRandomness
from draft_lightning.samplers.base import DenoiserCall, Sampler, SampleResult
from draft_lightning.samplers.settings import SamplingSettings


@dataclass(frozen=True)
class FlowSchedule:
    """`sigmas`: the N step levels then a terminal 0 (N + 1 values, float32); `timesteps`:
    the N values the transformers are fed, sigma * num_train_timesteps (float32)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


def flux_base_sigmas(num_steps: int) -> np.ndarray:
    """FluxPipeline's unshifted levels, linspace(1, 1/N, N): its last step ends at 0 from
    1/N, where the scheduler's own spacing would stop at 1/1000."""
    return np.linspace(1.0, 1.0 / num_steps, num_steps)


def image_seq_len(latent_height: int, latent_width: int, patch_size: int = 2) -> int:
    """How many image tokens the transformer sees: FLUX packs and SD3 patchifies 2x2 latent
    pixels into one token. The dynamic shift grows with it."""
    return (latent_height // patch_size) * (latent_width // patch_size)


def flow_schedule(
    scheduler_config: Mapping[str, Any],
    num_steps: int,
    *,
    base_sigmas: np.ndarray | None = None,
    image_seq_len: int | None = None,
    device: torch.device | str | None = None,
) -> FlowSchedule:
    """The schedule a flow matching pipeline samples with, from its scheduler's config.

    Args:
        base_sigmas: the unshifted levels the pipeline passes (FLUX: `flux_base_sigmas(N)`);
            None lets the scheduler space them itself (SD3).
        image_seq_len: the image token count; required when the config uses dynamic
            shifting (FLUX.1-dev), where it sets mu as the pipelines do.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    # A fresh scheduler per call: set_timesteps mutates it, and nothing here may depend on
    # what an earlier call left behind.
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    config = scheduler.config
    kwargs = {}
    if config.use_dynamic_shifting:
        if image_seq_len is None:
            raise ValueError("this scheduler shifts by resolution: image_seq_len is required")
        kwargs["mu"] = calculate_shift(
            image_seq_len,
            config.base_image_seq_len,
            config.max_image_seq_len,
            config.base_shift,
            config.max_shift,
        )
    if base_sigmas is None:
        scheduler.set_timesteps(num_steps, device=device, **kwargs)
    else:
        scheduler.set_timesteps(sigmas=list(base_sigmas), device=device, **kwargs)
    return FlowSchedule(scheduler.sigmas, scheduler.timesteps)


def _per_sample(sigma: torch.Tensor | float, like: torch.Tensor, dtype: torch.dtype):
    """sigma as a tensor that broadcasts against `like`: a scalar, or one value per row."""
    sigma = torch.as_tensor(sigma, dtype=dtype, device=like.device)
    if sigma.dim() == 1:
        sigma = sigma.reshape(-1, *([1] * (like.dim() - 1)))
    return sigma


def euler_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
) -> torch.Tensor:
    """x + (sigma_next - sigma) * v, returned in v's dtype, as the scheduler's `step` does.

    Precisely: the scheduler's step size is a 0-dim float32 tensor, which does not promote
    v, so it is rounded to v's dtype before the product; only the sum runs in float32. We
    round it the same way, so per-row levels give what per-row scalar calls would. Pass the
    schedule's float32 sigmas to match the scheduler bit for bit.
    """
    dt = _per_sample(sigma_next, x, torch.float32) - _per_sample(sigma, x, torch.float32)
    return (x.to(torch.float32) + dt.to(v.dtype) * v).to(v.dtype)


def renoise(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The noisy latent at level sigma: (1 - sigma) * x0 + sigma * eps (the scheduler's
    `scale_noise`)."""
    sigma = _per_sample(sigma, x0, x0.dtype)
    return sigma * eps + (1.0 - sigma) * x0


def predict_x0(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The clean latent the velocity points to: x - sigma * v."""
    return x - _per_sample(sigma, x, x.dtype) * v


class FlowMatchEulerSampler(Sampler):
    """Euler steps on a flow matching schedule, with the gradient window of samplers/base.py.

    The model's (guided) output is the velocity v; step i goes from sigma_i to sigma_{i+1}
    (the last to 0), its x0 prediction is x - sigma_i v, and re-noising for step i is the
    forward process at sigma_i. Latents keep their dtype between steps (float32 noise stays
    float32 under mixed precision); in float32 every step equals the scheduler's bit for bit.

    Args:
        schedule: the levels and timesteps the family's pipeline samples with (`flow_schedule`).
        num_train_timesteps: the scheduler's timestep scale (timestep = sigma * this).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        call: DenoiserCall,
        schedule: FlowSchedule,
        settings: SamplingSettings,
        num_train_timesteps: int = 1000,
        **options,
    ) -> None:
        super().__init__(denoiser, call, settings, **options)
        self.schedule = schedule
        self.num_train_timesteps = num_train_timesteps

    @property
    def num_steps(self) -> int:
        return len(self.schedule)

    def sigma(self, index: int) -> torch.Tensor:
        """The level step `index` starts from (float32, 0-dim); index num_steps is 0."""
        return self.schedule.sigmas[index]

    def timestep(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        return self.schedule.timesteps[index].to(latents.device)

    def update(
        self,
        latents: torch.Tensor,
        index: int,
        prediction: torch.Tensor,
        rng: StepRandomness | None,
        copies: int,
    ) -> SampleResult:
        v = prediction.to(latents.dtype)
        sigma = self.sigma(index)
        return SampleResult(
            euler_step(latents, v, sigma, self.sigma(index + 1)), predict_x0(latents, v, sigma)
        )

    def renoise(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        return renoise(x0, noise, self.sigma(index))

    # Any level in [0, 1] is a level the transformer was trained on.

    def snap_level(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.to(torch.float32).clamp(0.0, 1.0)

    def level_timestep(self, sigma: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return (sigma.to(torch.float32) * self.num_train_timesteps).to(latents.device)

    def noise_to_level(
        self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        return renoise(x0, noise, sigma.to(x0.device))

    def recover_x0(
        self,
        latents: torch.Tensor,
        prediction: torch.Tensor,
        noise: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
    ) -> torch.Tensor:
        sigma, sigma_next = sigma.to(latents.device), sigma_next.to(latents.device)
        stepped = euler_step(latents, prediction.to(latents.dtype), sigma, sigma_next)
        left = _per_sample(sigma_next, latents, latents.dtype)
        return (stepped - left * noise) / (1.0 - left)
