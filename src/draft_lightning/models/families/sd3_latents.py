"""SD3 / SD3.5's denoiser call, as in diffusers' StableDiffusion3Pipeline.

The transformer takes the (batch, 16, H, W) latent directly (it patchifies 2x2 itself, so
H and W must be even) and the timestep as the schedule gives it, sigma * 1000, not divided
(FLUX's transformer takes it divided by 1000).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def sd3_velocity(
    transformer: nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor | float,
    cond: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """The transformer's velocity for `latents` at `timestep` (0-1000). `cond` holds its
    keyword inputs: `encoder_hidden_states` and `pooled_projections`."""
    t = torch.as_tensor(timestep, device=latents.device).expand(latents.shape[0])
    return transformer(hidden_states=latents, timestep=t, return_dict=False, **cond)[0]
