"""DDIM: the sampler of the UNet families (SD 1.x/2.x, SDXL), with diffusers' scheduler
arithmetic (epsilon and v-prediction, any eta).

The update is diffusers' own `DDIMScheduler.step`, which is stateless given the timestep, so
it is safe inside a gradient window. Re-noising is the scheduler's `add_noise`.

With eta > 0 each step is a Gaussian policy (what DDPO's likelihood ratio needs):

    mean = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev - std^2) * eps_hat
    std  = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))

where x0_hat and eps_hat come from the model output (epsilon, v or sample prediction, with
the scheduler's clipping or thresholding of x0_hat) and abar_prev is the scheduler's
`final_alpha_cumprod` past the last step. `ddim_transition` below is the scheduler's
arithmetic, term for term and in the same order, so `mean + std * noise` is bit for bit
`step(...).prev_sample` (tests/samplers/test_ddim.py); only the log density is new.

Log-probabilities are the MEAN over the latent's dimensions of the per-dimension Gaussian log
density (the full log density divided by C*H*W). DDPO's published clip range (1e-4) is
calibrated for this per-dimension scale; summed densities would make likelihood ratios
C*H*W times more extreme.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from draft_lightning.randomness import StepRandomness
from draft_lightning.samplers.base import DenoiserCall, Sampler, SampleResult
from draft_lightning.samplers.settings import SamplingSettings

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class DDIMTransition:
    """The Gaussian p(x_{t-1} | x_t) of one DDIM step with eta > 0."""

    mean: torch.Tensor
    std: torch.Tensor  # 0-dim: every dimension of every sample shares it
    pred_original_sample: torch.Tensor

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """x_{t-1} for standard normal `noise` (what DDIMScheduler.step returns for it)."""
        return self.mean + self.std * noise

    def log_prob(self, next_sample: torch.Tensor) -> torch.Tensor:
        """Per-sample mean over latent dimensions of log N(next_sample; mean, std^2), float32."""
        if float(self.std) <= 0:
            raise ValueError("a DDIM step with zero variance has no log-probability (eta = 0?)")
        std = self.std.to(device=self.mean.device, dtype=torch.float32)
        diff = next_sample.float() - self.mean.float()
        density = -(diff**2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
        return density.flatten(1).mean(dim=1)


def alphas_of_step(scheduler, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(abar_t, abar_prev) of the step from `timestep`, as DDIMScheduler.step picks them."""
    prev_timestep = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_prod_t = scheduler.alphas_cumprod[timestep]
    if prev_timestep >= 0:
        return alpha_prod_t, scheduler.alphas_cumprod[prev_timestep]
    return alpha_prod_t, scheduler.final_alpha_cumprod


def ddim_std(scheduler, timestep: int, eta: float) -> torch.Tensor:
    """eta * sigma_t of the step from `timestep` (0-dim, on the scheduler's device)."""
    alpha_prod_t, alpha_prod_t_prev = alphas_of_step(scheduler, timestep)
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    return eta * variance ** (0.5)


def ddim_transition(
    scheduler, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float
) -> DDIMTransition:
    """The DDIM step from `sample` at `timestep` for a (guided) model output, as a Gaussian.

    `scheduler` is a diffusers DDIMScheduler after `set_timesteps`; its config decides the
    prediction type and the clipping of the x0 prediction, as in its own `step`.
    """
    alpha_prod_t, alpha_prod_t_prev = alphas_of_step(scheduler, timestep)
    beta_prod_t = 1 - alpha_prod_t
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (
            0.5
        )
        pred_epsilon = model_output
    elif prediction_type == "v_prediction":
        pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
    elif prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (
            0.5
        )
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")

    if scheduler.config.thresholding:
        pred_original_sample = scheduler._threshold_sample(pred_original_sample)
    elif scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        pred_original_sample = pred_original_sample.clamp(-limit, limit)

    std = ddim_std(scheduler, timestep, eta)
    direction = (1 - alpha_prod_t_prev - std**2) ** (0.5) * pred_epsilon
    mean = alpha_prod_t_prev ** (0.5) * pred_original_sample + direction
    return DDIMTransition(mean, std, pred_original_sample)


class DDIMSampler(Sampler):
    """DDIM with a gradient window (see samplers/base.py); `scheduler` is a diffusers
    DDIMScheduler built from the checkpoint's scheduler config."""

    def __init__(
        self,
        denoiser: nn.Module,
        call: DenoiserCall,
        scheduler,
        settings: SamplingSettings,
        **options,
    ) -> None:
        super().__init__(denoiser, call, settings, **options)
        self.scheduler = scheduler
        scheduler.set_timesteps(settings.num_steps)
        self.timesteps: list[int] = [int(t) for t in scheduler.timesteps]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def timestep(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        return torch.full((), self.timesteps[index], device=latents.device, dtype=torch.long)

    def update(
        self,
        latents: torch.Tensor,
        index: int,
        prediction: torch.Tensor,
        rng: StepRandomness | None,
        copies: int,
    ) -> SampleResult:
        noise = None
        if self.settings.eta > 0:
            if rng is None:
                raise ValueError("eta > 0 needs an rng for the DDIM noise")
            shape = tuple(latents.shape[1:])
            noise = rng.randn(latents.shape[0], shape, latents.dtype, copies=copies)
            noise = noise.to(latents.device)
        out = self.scheduler.step(
            prediction, self.timesteps[index], latents, eta=self.settings.eta, variance_noise=noise
        )
        return SampleResult(out.prev_sample, out.pred_original_sample)

    def renoise(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, torch.tensor([self.timesteps[index]]))

    def transition(
        self, prediction: torch.Tensor, index: int, latents: torch.Tensor
    ) -> DDIMTransition:
        """Step `index` as a Gaussian (eta > 0), for likelihood-based methods (DDPO)."""
        return ddim_transition(
            self.scheduler, prediction, self.timesteps[index], latents, self.settings.eta
        )

    def step_std(self, index: int) -> torch.Tensor:
        """The standard deviation of step `index` (0 where the step is deterministic)."""
        return ddim_std(self.scheduler, self.timesteps[index], self.settings.eta)
