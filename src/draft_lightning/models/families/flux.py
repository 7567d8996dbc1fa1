"""FLUX.1 (dev and schnell), as diffusers' FluxPipeline samples it.

- Text: T5 reads the prompt padded to `max_sequence_length` tokens (512, the pipeline's
  default) and gives the token sequence the transformer attends to; CLIP-L gives only its
  pooled output, which joins the timestep embedding.
- Guidance: FLUX.1-dev is guidance-distilled: the guidance scale is one more transformer
  input (float32, one value per row), with one call per step and no classifier-free
  guidance. FLUX.1-schnell has no guidance input; the transformer config's
  `guidance_embeds` says which one a folder holds.
- Latents: the transformer sees a latent image as a sequence of tokens: each 2x2 patch of
  the 16-channel VAE latent becomes one 64-feature token, in row-major patch order, with a
  position id [0, patch row, patch column] for its rotary embedding (text tokens get id 0).
  We keep latents unpacked, (batch, 16, H, W) like every other family, and pack only around
  the transformer call: packing is a permutation, so the Euler update and re-noising give the
  same numbers on either layout, and the sampler need not know about tokens.
- Schedule: sigmas linspace(1, 1/N, N), shifted by an amount set by the image's token count
  (FLUX.1-dev's `use_dynamic_shifting`; schnell: no shift).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.models.families.base import load_clip_text_parts, read_json
from draft_lightning.models.families.flow_common import (
    PATCH,
    FlowMatchingFamily,
    encoder_device,
    load_t5,
    padded_token_ids,
    t5_hidden_states,
)
from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.samplers.flow_match_euler import flux_base_sigmas
from draft_lightning.samplers.settings import SamplingSettings

FLUX_MAX_SEQUENCE_LENGTH = 512  # diffusers' limit and FluxPipeline's default


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2x2 patch a token, channel-major inside."""
    b, c, h, w = latents.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"FLUX latents need an even height and width, got {h}x{w}")
    patches = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents` for a (height, width) latent."""
    b, _, features = tokens.shape
    c = features // (PATCH * PATCH)
    patches = tokens.view(b, height // PATCH, width // PATCH, c, PATCH, PATCH)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def latent_image_ids(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(H/2 * W/2, 3) rotary position ids of the packed tokens: [0, patch row, patch col]."""
    rows, cols = height // PATCH, width // PATCH
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def text_ids(
    seq_len: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(seq_len, 3) zeros: text tokens all sit at rotary position 0."""
    return torch.zeros(seq_len, 3, device=device, dtype=dtype)


def flux_velocity(
    transformer: nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor | float,
    cond: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """The transformer's velocity for unpacked `latents` at `timestep` (sigma * 1000, the
    schedule's value; one value or one per row), same shape and dtype as `latents`.

    `cond` holds the transformer's keyword inputs (`encoder_hidden_states`,
    `pooled_projections`, and `guidance` for FLUX.1-dev). As in FluxPipeline: latents and
    timestep go in the transformer's dtype, the timestep divided by 1000 (the transformer
    multiplies by 1000 again); the guidance value goes in float32 (scaled by 1000 inside
    too); the position ids are rebuilt for this latent size.
    """
    batch, _, height, width = latents.shape
    hidden = cond["encoder_hidden_states"]
    dtype = hidden.dtype
    t = torch.as_tensor(timestep, device=latents.device).expand(batch).to(dtype)
    tokens = transformer(
        hidden_states=pack_latents(latents).to(dtype),
        timestep=t / 1000,
        txt_ids=text_ids(hidden.shape[1], hidden.device, dtype),
        img_ids=latent_image_ids(height, width, hidden.device, dtype),
        return_dict=False,
        **cond,
    )[0]
    return unpack_latents(tokens, height, width)


class FluxPromptEncoder(nn.Module):
    """Prompts to FLUX transformer inputs: `encoder_hidden_states` (T5), `pooled_projections`
    (CLIP) and, when the transformer has a guidance embedding, `guidance` (float32, one value
    per row, as the pipeline passes it).

    Args:
        guidance_embeds: whether the transformer takes a guidance value (its config's
            `guidance_embeds`: True for FLUX.1-dev, False for schnell).
    """

    def __init__(
        self,
        clip_tokenizer,
        clip_encoder: nn.Module,
        t5_tokenizer,
        t5_encoder: nn.Module,
        max_sequence_length: int = FLUX_MAX_SEQUENCE_LENGTH,
        guidance_embeds: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < max_sequence_length <= FLUX_MAX_SEQUENCE_LENGTH:
            raise ValueError(
                f"max_sequence_length={max_sequence_length} must be in 1..."
                f"{FLUX_MAX_SEQUENCE_LENGTH} (FLUX's T5 reads at most 512 tokens)"
            )
        self.clip_tokenizer = clip_tokenizer
        self.clip_encoder = clip_encoder
        self.t5_tokenizer = t5_tokenizer
        self.t5_encoder = t5_encoder
        self.max_sequence_length = max_sequence_length
        self.guidance_embeds = guidance_embeds

    @classmethod
    def from_pipeline(cls, pipe, **kwargs) -> FluxPromptEncoder:
        """The encoder over a loaded FluxPipeline's tokenizers and text encoders."""
        return cls(
            pipe.tokenizer,
            pipe.text_encoder,
            pipe.tokenizer_2,
            pipe.text_encoder_2,
            guidance_embeds=pipe.transformer.config.guidance_embeds,
            **kwargs,
        )

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The prompt-dependent inputs: T5 hidden states and CLIP's pooled embedding."""
        ids = padded_token_ids(
            self.clip_tokenizer,
            prompts,
            self.clip_tokenizer.model_max_length,
            encoder_device(self.clip_encoder),
        )
        pooled = self.clip_encoder(ids, output_hidden_states=False).pooler_output
        hidden = t5_hidden_states(
            self.t5_tokenizer, self.t5_encoder, prompts, self.max_sequence_length
        )
        return {
            "encoder_hidden_states": hidden,
            "pooled_projections": pooled.to(self.clip_encoder.dtype),
        }

    def condition(self, prompts: Sequence[str], guidance_scale: float) -> Conditioning:
        cond = self.embed(prompts)
        if self.guidance_embeds:
            hidden = cond["encoder_hidden_states"]
            cond["guidance"] = torch.full(
                (hidden.shape[0],), guidance_scale, dtype=torch.float32, device=hidden.device
            )
        return Conditioning(cond, None)


class FluxFamily(FlowMatchingFamily):
    """FLUX.1-dev and FLUX.1-schnell (and fine-tunes saved by FluxPipeline)."""

    name = "flux"
    pipeline_classes = ("FluxPipeline",)
    display_name = "FLUX.1"
    denoiser_class = "FluxTransformer2DModel"
    # diffusers' examples/dreambooth/train_dreambooth_lora_flux.py: the double blocks'
    # image and text attention and feed-forwards; the single blocks' attn.to_q/k/v match too.
    lora_targets = (
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )

    def check_sampling(self, configs: dict[str, dict], settings: SamplingSettings) -> None:
        super().check_sampling(configs, settings)
        if not configs["denoiser"].get("guidance_embeds") and settings.guidance_scale not in (
            0.0,
            1.0,
        ):
            raise ConfigError(
                f"sampling.guidance_scale={settings.guidance_scale}: this FLUX.1 transformer "
                "takes no guidance (guidance_embeds is false, as in FLUX.1-schnell); set 0 or 1"
            )

    def base_sigmas(self, num_steps: int) -> np.ndarray:
        return flux_base_sigmas(num_steps)

    def load_prompt_encoder(
        self, folder: Path, dtype: torch.dtype, resolution: int, options: dict[str, Any]
    ) -> nn.Module:
        ((clip_tokenizer, clip_encoder),) = load_clip_text_parts(
            folder, (("tokenizer", "text_encoder"),), dtype
        )
        t5_tokenizer, t5_encoder = load_t5(folder, "tokenizer_2", "text_encoder_2", dtype)
        transformer_config = read_json(folder / self.denoiser_folder / "config.json")
        return FluxPromptEncoder(
            clip_tokenizer,
            clip_encoder,
            t5_tokenizer,
            t5_encoder,
            guidance_embeds=bool(transformer_config.get("guidance_embeds")),
        )

    def predict(
        self, denoiser: nn.Module, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict
    ) -> torch.Tensor:
        return flux_velocity(denoiser, latents, timestep, inputs)
