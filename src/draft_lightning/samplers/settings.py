"""How images are sampled: steps, guidance, stochasticity and resolution."""

from __future__ import annotations

from dataclasses import dataclass

from draft_lightning.errors import ConfigError


@dataclass(frozen=True)
class SamplingSettings:
    """How images are sampled.

    Args:
        num_steps: DDIM sampling steps (the paper: 50); Euler steps for flow-matching models.
        guidance_scale: classifier-free guidance weight (1 means no unconditional pass); for
            a guidance-distilled model (FLUX.1-dev) the value its guidance embedding receives.
        eta: DDIM eta; 0 is deterministic DDIM, 1 is DDPM-like ancestral noise (DDIM only).
        resolution: image height and width in pixels; must divide by the VAE's factor.
    """

    num_steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    resolution: int = 512

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"sampling.num_steps={self.num_steps} must be >= 1")
        if self.guidance_scale < 0:
            raise ConfigError(f"sampling.guidance_scale={self.guidance_scale} must be >= 0")
        if self.eta < 0:
            raise ConfigError(f"sampling.eta={self.eta} must be >= 0")
        if self.resolution < 1:
            raise ConfigError(f"sampling.resolution={self.resolution} must be >= 1")
