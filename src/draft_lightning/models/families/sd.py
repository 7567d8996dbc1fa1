"""Stable Diffusion 1.x and 2.x: one CLIP text encoder conditioning a UNet, sampled with DDIM.

SD 2.x needs nothing of its own: its v-prediction lives in the scheduler config, which
diffusers' DDIM step already honours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.models.families.base import (
    ModelFamily,
    load_clip_text_parts,
    token_ids,
)
from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.samplers.ddim import DDIMSampler
from draft_lightning.samplers.settings import SamplingSettings


class PromptEncoder(nn.Module):
    """The frozen CLIP text encoder with its tokenizer; the empty-prompt embedding is cached."""

    def __init__(self, tokenizer, text_encoder: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._uncond_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(token_ids(self.tokenizer, prompts, device))[0]

    def condition(self, prompts: Sequence[str], guidance_scale: float) -> Conditioning:
        cond = self.embed(prompts)
        if guidance_scale == 1.0:
            return Conditioning({"encoder_hidden_states": cond})
        key = (cond.device, cond.dtype)
        if key not in self._uncond_cache:
            self._uncond_cache[key] = self.embed([""])
        uncond = self._uncond_cache[key].expand(len(prompts), -1, -1)
        return Conditioning({"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond})


class StableDiffusionFamily(ModelFamily):
    """SD 1.x and 2.x."""

    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    display_name = "SD 1.x/2.x"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    text_parts: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)

    def check(self, folder: Path, configs: dict[str, dict], options: dict[str, Any]) -> None:
        if configs["denoiser"].get("addition_embed_type") == "text_time":
            raise ConfigError(
                f"{folder} is a {self.pipeline_class} whose UNet expects SDXL's added "
                "conditioning (addition_embed_type='text_time'): fix model_index.json"
            )

    def load_prompt_encoder(
        self, folder: Path, dtype: torch.dtype, resolution: int, options: dict[str, Any]
    ) -> nn.Module:
        ((tokenizer, encoder),) = load_clip_text_parts(folder, self.text_parts, dtype)
        return PromptEncoder(tokenizer, encoder)

    def make_sampler(
        self, denoiser: nn.Module, folder: Path, settings: SamplingSettings, **options
    ) -> DDIMSampler:
        """DDIM built from the checkpoint's own scheduler config (SD 1.x ships PNDM, SDXL
        Euler; the values carry over)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        return DDIMSampler(denoiser, self.predict, scheduler, settings, **options)

    def predict(
        self, denoiser: nn.Module, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict
    ) -> torch.Tensor:
        return denoiser(latents, timestep, **inputs).sample

    def decode(self, vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
        config = vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:  # VAEs with per-channel latent statistics
            shape = (1, -1, 1, 1)
            mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
            std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
            scaled = latents * std / config.scaling_factor + mean
        else:
            scaled = latents / config.scaling_factor
        images = vae.decode(scaled.to(vae.dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)
