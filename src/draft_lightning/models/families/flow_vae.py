"""Decoding FLUX.1 and SD3 latents: both VAEs were trained on shifted and scaled latents.

The denoisers work on (z - shift_factor) * scaling_factor (FLUX.1: shift 0.1159, scale
0.3611; SD3: 0.0609, 1.5305), so decoding first undoes that, as both pipelines do. SD 1.x
and SDXL have no shift; using their decode here would give a visibly off image, not an error.
"""

from __future__ import annotations

import torch
from torch import nn


def decode_flow_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (the VAE's raw output, unclamped) from denoiser-space latents."""
    config = vae.config
    latents = latents / config.scaling_factor + config.shift_factor
    return vae.decode(latents, return_dict=False)[0]
