"""Classifier-free guidance over a `Conditioning`, as diffusers' pipelines batch it.

With an unconditional branch, one denoiser call runs on the rows [uncond; cond] (the SD3
pipeline's order) and the prediction is uncond + scale * (cond - uncond); without one (FLUX,
or guidance scale 1) a single call on the prompts' rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from draft_lightning.samplers.conditioning import Conditioning

# denoiser(latents, timestep, keyword inputs) -> prediction shaped like latents
Denoiser = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


def guided_prediction(
    denoiser: Denoiser,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
) -> torch.Tensor:
    if conditioning.uncond is None:
        return denoiser(latents, timestep, conditioning.cond)
    inputs = {
        name: torch.cat([conditioning.uncond[name], value])
        for name, value in conditioning.cond.items()
    }
    uncond, cond = denoiser(torch.cat([latents, latents]), timestep, inputs).chunk(2)
    return uncond + guidance_scale * (cond - uncond)
