"""Direct-Align (SRPO: Shen et al., "Directly Aligning the Full Diffusion Trajectory with
Fine-Grained Human Preference", arXiv 2509.06942, 2025): one differentiable model call on a
re-noised clean sample whose noise is known, and the clean latent recovered in closed form.

A latent at level sigma is an interpolation (1 - sigma) x0 + sigma eps. Knowing eps, x0 can be
recovered from any level, however noisy, without running the rest of the chain: the model
takes one Euler step from sigma to sigma_next (the only differentiated call), and the noise
still left at sigma_next, sigma_next * eps, is removed exactly:

    x_sigma = (1 - sigma) sg(x0) + sigma eps
    x_next  = x_sigma + (sigma_next - sigma) v_theta(x_sigma, sigma)
    x0_hat  = (x_next - sigma_next eps) / (1 - sigma_next)

With sigma_next = 0 this is x0_hat = x_sigma - sigma v_theta. SRPO's released training code
(fastvideo/SRPO_Qwen.py, Tencent-Hunyuan/SRPO) does exactly this, with sigma drawn from a
range of mid-to-high noise levels and a step of up to ~0.3 in sigma; in its online mode the
known noise is the trajectory's own initial noise x_T (the "noise prior"), with real images it
is fresh noise. Not reproduced here: its per-level weighting of the loss (`discount`), and
the inversion branch its README mentions. The relative reward against control phrases is a
reward (draft_lightning.rewards.RelativeReward), so it also works with every other estimator.

On DDIM families (SD 1.x/2.x, SDXL) the same algebra holds for x_t = a x0 + b eps: levels are
snapped to the nearest of the 1000 training timesteps (sigma_t = b / (a + b)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from draft_lightning.errors import ConfigError
from draft_lightning.estimators.base import Estimator
from draft_lightning.randomness import StepRandomness

SRPO_MAX_SIGMA = 0.99  # SRPO: above this the recovered image is unreliable


@dataclass(frozen=True)
class DirectAlign(Estimator):
    """Direct-Align (SRPO): sample x0 without gradient, noise it to a level sigma with a known
    noise, take one differentiable model step and recover x0 in closed form.

    Args:
        sigma: the noise level, a flow matching sigma (x = (1 - sigma) x0 + sigma eps);
            None (default) draws one per sample uniformly from `sigma_range`.
        sigma_range: (low, high) for drawn levels; (0.2, 0.9) is the range of SRPO's released
            script (train_timestep 5..40 of 50 unshifted steps). At most 0.99 (SRPO's advice).
        step: how far down in sigma the differentiable model step goes (sigma_next =
            sigma - step, at least 0); the rest of the noise is removed with the known noise.
            None (default): all the way, x0 = x_sigma - sigma v.
        noise: "initial" re-uses each trajectory's initial noise x_T as the known noise (SRPO's
            online mode); "fresh" draws new noise (SRPO with real images).
    """

    sigma: float | None = None
    sigma_range: tuple[float, float] = (0.2, 0.9)
    step: float | None = None
    noise: Literal["initial", "fresh"] = "initial"

    def __post_init__(self) -> None:
        low, high = self.sigma_range
        if self.sigma is not None and not 0 < self.sigma <= SRPO_MAX_SIGMA:
            raise ConfigError(
                f"estimator sigma={self.sigma} must be in (0, {SRPO_MAX_SIGMA}] (SRPO: levels "
                "above 0.99 recover unreliable images)"
            )
        if not 0 < low <= high <= SRPO_MAX_SIGMA:
            raise ConfigError(
                f"estimator sigma_range={list(self.sigma_range)} must satisfy 0 < low <= high "
                f"<= {SRPO_MAX_SIGMA}"
            )
        if self.step is not None and self.step <= 0:
            raise ConfigError(f"estimator step={self.step} must be > 0 (or null: all the way)")
        if self.noise not in ("initial", "fresh"):
            raise ConfigError(f"estimator noise={self.noise!r} must be 'initial' or 'fresh'")

    @property
    def steps_through_chain(self) -> bool:
        return False

    def draw_levels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """One level per trajectory of the global batch (CPU float32)."""
        if self.sigma is not None:
            return torch.full((batch,), float(self.sigma))
        low, high = self.sigma_range
        return low + (high - low) * torch.rand(batch, generator=generator)

    def sample(self, sampler, noise, text, rng: StepRandomness):
        with torch.no_grad():
            x0 = sampler.sample(noise, text, grad_from=sampler.num_steps, rng=rng).latents
        batch = x0.shape[0]
        wanted = rng.mine(self.draw_levels(batch * rng.world_size, rng.generator))
        sigma = sampler.snap_level(wanted)
        below = torch.zeros_like(wanted) if self.step is None else wanted - self.step
        sigma_next = sampler.snap_level(below.clamp(min=0.0))
        if self.noise == "fresh":
            known = rng.randn(batch, tuple(x0.shape[1:]), dtype=x0.dtype).to(x0.device)
        else:
            known = noise.to(x0.dtype)
        noisy = sampler.noise_to_level(x0, known, sigma)
        prediction = sampler.predict_at_level(noisy, sigma, text)
        return sampler.recover_x0(noisy, prediction, known, sigma, sigma_next)
