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

    # --- continuous noise levels (Direct-Align) ---------------------------------------------
    # A latent at training timestep t is sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, i.e. up to a
    # scale the flow-matching latent at sigma_t = sqrt(1 - abar_t) / (sqrt(abar_t) +
    # sqrt(1 - abar_t)). The UNet knows only the 1000 training timesteps, so a level snaps
    # to the nearest sigma_t; level 0 (a target only, never a call) is the clean latent.

    def training_levels(self) -> torch.Tensor:
        """sigma_t for t = 0 .. num_train_timesteps - 1 (float32, increasing)."""
        abar = self.scheduler.alphas_cumprod.to(torch.float64)
        signal, noise = abar.sqrt(), (1 - abar).sqrt()
        return (noise / (signal + noise)).float()

    def _nearest_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        levels = self.training_levels()
        return (sigma.float().cpu()[:, None] - levels[None]).abs().argmin(dim=1)

    def snap_level(self, sigma: torch.Tensor) -> torch.Tensor:
        snapped = self.training_levels()[self._nearest_timestep(sigma)]
        return torch.where(sigma.float().cpu() <= 0, 0.0, snapped)

    def level_timestep(self, sigma: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self._nearest_timestep(sigma).to(latents.device)

    def _signal_and_noise(self, sigma: torch.Tensor, like: torch.Tensor):
        """sqrt(abar), sqrt(1 - abar) of (snapped) levels, per row, shaped to broadcast."""
        abar = self.scheduler.alphas_cumprod[self._nearest_timestep(sigma)]
        abar = torch.where(sigma.float().cpu() <= 0, 1.0, abar)  # level 0: the clean latent
        shape = (-1, *([1] * (like.dim() - 1)))
        abar = abar.to(device=like.device, dtype=like.dtype).view(shape)
        return abar.sqrt(), (1 - abar).sqrt()

    def noise_to_level(
        self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        signal, scale = self._signal_and_noise(sigma, x0)
        return signal * x0 + scale * noise

    def recover_x0(
        self,
        latents: torch.Tensor,
        prediction: torch.Tensor,
        noise: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
    ) -> torch.Tensor:
        """x0_hat + (b'/a') (eps_hat - eps): the DDIM (eta 0) step to level `sigma_next`,
        a' x0_hat + b' eps_hat, with its known noise b' eps removed. Unclipped x0_hat."""
        signal, scale = self._signal_and_noise(sigma, latents)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            x0, eps = (latents - scale * prediction) / signal, prediction
        elif kind == "v_prediction":
            x0 = signal * latents - scale * prediction
            eps = signal * prediction + scale * latents
        else:  # "sample"
            x0, eps = prediction, (latents - signal * prediction) / scale
        signal_next, scale_next = self._signal_and_noise(sigma_next, latents)
        return x0 + scale_next / signal_next * (eps - noise)

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
