"""What FLUX.1 and SD3/SD3.5 share: a transformer over 2x2 latent patches sampled by Euler on
a flow matching schedule, a T5 encoder read the way both pipelines read it, and a VAE whose
latents are shifted as well as scaled.

Both pipelines pad (and truncate) every prompt to a fixed length, CLIP's to its tokenizer's
77 tokens and T5's to `max_sequence_length`, with no attention mask: the padding tokens'
hidden states are part of the conditioning the models were trained on. Both VAEs were trained
on (z - shift_factor) * scaling_factor (FLUX.1: shift 0.1159, scale 0.3611; SD3: 0.0609,
1.5305), so decoding first undoes that; SD's decode (no shift) would give a visibly off image,
not an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.models.families.base import ModelFamily, frozen, read_json
from draft_lightning.samplers.flow_match_euler import (
    FlowMatchEulerSampler,
    flow_schedule,
    image_seq_len,
)
from draft_lightning.samplers.settings import SamplingSettings

PATCH = 2  # latent pixels per transformer token side, in both families


def padded_token_ids(
    tokenizer, prompts: Sequence[str], max_length: int, device: torch.device
) -> torch.Tensor:
    """(batch, max_length) token ids, padded and truncated to exactly `max_length`."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def encoder_device(encoder: nn.Module) -> torch.device:
    return next(encoder.parameters()).device


@torch.no_grad()
def t5_hidden_states(
    tokenizer, encoder: nn.Module, prompts: Sequence[str], max_length: int
) -> torch.Tensor:
    """T5's last hidden states, (batch, max_length, d_model), in the encoder's dtype."""
    ids = padded_token_ids(tokenizer, prompts, max_length, encoder_device(encoder))
    return encoder(ids)[0].to(encoder.dtype)


def load_t5(folder: Path, tokenizer_dir: str, encoder_dir: str, dtype: torch.dtype):
    """The T5 tokenizer and frozen T5 encoder saved in a pipeline folder."""
    from transformers import T5EncoderModel, T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(folder, subfolder=tokenizer_dir)
    encoder = T5EncoderModel.from_pretrained(folder, subfolder=encoder_dir, dtype=dtype)
    return tokenizer, frozen(encoder)


def decode_flow_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (the VAE's raw output, unclamped) from denoiser-space latents."""
    config = vae.config
    latents = latents / config.scaling_factor + config.shift_factor
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0]


class FlowMatchingFamily(ModelFamily):
    """A transformer family sampled by Euler steps on a flow matching schedule (no pipeline
    class of its own: FLUX.1 and SD3 subclass it)."""

    denoiser_folder = "transformer"
    lora_component = "transformer"

    def base_sigmas(self, num_steps: int) -> np.ndarray | None:
        """The unshifted levels the pipeline passes its scheduler (None: its own spacing)."""
        return None

    def check_sampling(self, configs: dict[str, dict], settings: SamplingSettings) -> None:
        if settings.eta != 0:
            raise ConfigError(
                f"sampling.eta={settings.eta}: {self.display_name} samples with deterministic "
                "flow matching Euler steps, which have no eta (it is DDIM's noise, which DDPO "
                "needs); set 0"
            )
        factor = self.vae_scale_factor(configs["vae"])
        if settings.resolution % (factor * PATCH):
            raise ConfigError(
                f"sampling.resolution={settings.resolution} is not divisible by "
                f"{factor * PATCH} (the VAE's downsampling factor {factor} times the "
                f"{self.display_name} transformer's {PATCH}x{PATCH} latent patches)"
            )

    def make_sampler(
        self, denoiser: nn.Module, folder: Path, settings: SamplingSettings, **options
    ) -> FlowMatchEulerSampler:
        """Euler on the schedule the family's pipeline would use at this resolution (the
        checkpoint's scheduler config: static shift, or a shift set by the token count)."""
        scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
        side = settings.resolution // self.vae_scale_factor(
            read_json(folder / "vae" / "config.json")
        )
        schedule = flow_schedule(
            scheduler_config,
            settings.num_steps,
            base_sigmas=self.base_sigmas(settings.num_steps),
            image_seq_len=image_seq_len(side, side, PATCH),
        )
        return FlowMatchEulerSampler(
            denoiser,
            self.predict,
            schedule,
            settings,
            num_train_timesteps=scheduler_config.get("num_train_timesteps", 1000),
            **options,
        )

    def decode(self, vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
        return (decode_flow_latents(vae, latents).float() / 2 + 0.5).clamp(0, 1)
