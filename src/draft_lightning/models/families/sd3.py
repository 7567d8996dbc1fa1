"""SD3 and SD3.5 (medium and large), as diffusers' StableDiffusion3Pipeline samples them.

- Text: the penultimate hidden states of CLIP-L and CLIP-G (both over CLIP-L's 77 tokens)
  are concatenated along the features, zero-padded to T5's width, and put in front of T5's
  hidden states along the sequence (T5's part is zeros when the folder has no T5, which SD3
  supports). The pooled input is the two CLIP projections concatenated.
- Guidance: classifier-free guidance (scale > 1, the pipeline's test) with the encoded empty
  prompt as the unconditional input, the pipeline's default negative prompt.
- Latents: the transformer takes the (batch, 16, H, W) latent directly (it patchifies 2x2
  itself) and the timestep as the schedule gives it, sigma * 1000, not divided (FLUX's
  transformer takes it divided by 1000).
- Schedule: the scheduler's own spacing with SD3's static shift 3 (which the scheduler
  applies twice at the low end: ask it, don't re-derive).
- SD3.5-Medium: the first 13 blocks have a second, image-only self-attention (`attn2`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
from draft_lightning.samplers.settings import SamplingSettings

SD3_MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length
# diffusers' examples/dreambooth/train_dreambooth_lora_sd3.py: joint attention, both streams.
SD3_LORA_TARGETS = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)
# SD3.5-Medium's dual-attention blocks also have `attn2`, which the list above misses (peft
# matches "attn.to_q" only as a whole suffix, never "attn2.to_q"); added where present.
SD35_DUAL_ATTENTION_TARGETS = ("attn2.to_k", "attn2.to_out.0", "attn2.to_q", "attn2.to_v")


def sd3_velocity(
    transformer: nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor | float,
    cond: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """The transformer's velocity for `latents` at `timestep` (0-1000; one value or one per
    row). `cond` holds its keyword inputs: `encoder_hidden_states` and `pooled_projections`."""
    dtype = cond["encoder_hidden_states"].dtype
    t = torch.as_tensor(timestep, device=latents.device).expand(latents.shape[0])
    return transformer(hidden_states=latents.to(dtype), timestep=t, return_dict=False, **cond)[0]


class SD3PromptEncoder(nn.Module):
    """Prompts to SD3 transformer inputs: `encoder_hidden_states` (77 CLIP tokens then
    `max_sequence_length` T5 tokens) and `pooled_projections`.

    Args:
        t5_tokenizer, t5_encoder: None for SD3 without T5; `joint_attention_dim` (the
            transformer config's) then sets the width of the zeros that replace T5.
    """

    def __init__(
        self,
        clip_l_tokenizer,
        clip_l_encoder: nn.Module,
        clip_g_tokenizer,
        clip_g_encoder: nn.Module,
        t5_tokenizer=None,
        t5_encoder: nn.Module | None = None,
        max_sequence_length: int = SD3_MAX_SEQUENCE_LENGTH,
        joint_attention_dim: int | None = None,
    ) -> None:
        super().__init__()
        if (t5_tokenizer is None) != (t5_encoder is None):
            raise ValueError("t5_tokenizer and t5_encoder must be given together or not at all")
        if t5_encoder is None and joint_attention_dim is None:
            raise ValueError("without a T5 encoder, joint_attention_dim must say T5's width")
        self.clip_tokenizers = [clip_l_tokenizer, clip_g_tokenizer]
        self.clip_encoders = nn.ModuleList([clip_l_encoder, clip_g_encoder])
        self.t5_tokenizer = t5_tokenizer
        self.t5_encoder = t5_encoder
        self.max_sequence_length = max_sequence_length
        self.joint_attention_dim = joint_attention_dim
        self._uncond_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    @classmethod
    def from_pipeline(cls, pipe, **kwargs) -> SD3PromptEncoder:
        """The encoder over a loaded StableDiffusion3Pipeline's tokenizers and text encoders
        (T5 left out where the pipeline was loaded without it)."""
        return cls(
            pipe.tokenizer,
            pipe.text_encoder,
            pipe.tokenizer_2,
            pipe.text_encoder_2,
            pipe.tokenizer_3,
            pipe.text_encoder_3,
            joint_attention_dim=pipe.transformer.config.joint_attention_dim,
            **kwargs,
        )

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        # Both CLIPs read CLIP-L's tokenizer length, and their hidden states take CLIP-L's
        # dtype, as in the pipeline.
        length = self.clip_tokenizers[0].model_max_length
        dtype = self.clip_encoders[0].dtype
        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.clip_tokenizers, self.clip_encoders, strict=True):
            ids = padded_token_ids(tokenizer, prompts, length, encoder_device(encoder))
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2].to(dtype))
            pooled.append(out.text_embeds)
        clip_hidden = torch.cat(hidden, dim=-1)
        t5 = self._t5(prompts, clip_hidden)
        clip_hidden = nn.functional.pad(clip_hidden, (0, t5.shape[-1] - clip_hidden.shape[-1]))
        return {
            "encoder_hidden_states": torch.cat([clip_hidden, t5], dim=-2),
            "pooled_projections": torch.cat(pooled, dim=-1),
        }

    def _t5(self, prompts: Sequence[str], clip_hidden: torch.Tensor) -> torch.Tensor:
        if self.t5_encoder is None:
            return clip_hidden.new_zeros(
                len(prompts), self.max_sequence_length, self.joint_attention_dim
            )
        return t5_hidden_states(
            self.t5_tokenizer, self.t5_encoder, prompts, self.max_sequence_length
        )

    def condition(self, prompts: Sequence[str], guidance_scale: float) -> Conditioning:
        """Inputs for `prompts`; with guidance_scale > 1 (the pipeline's test) also the empty
        prompt's, for classifier-free guidance."""
        cond = self.embed(prompts)
        if guidance_scale <= 1.0:
            return Conditioning(cond, None)
        hidden = cond["encoder_hidden_states"]
        # Keyed by batch size too: the pipeline encodes one empty prompt per row, and a
        # projection computed for 1 row can differ from one computed for B rows in the last
        # bit (another matmul kernel). Cached per size, the rows are the pipeline's exactly.
        key = (hidden.device, hidden.dtype, len(prompts))
        if key not in self._uncond_cache:
            self._uncond_cache[key] = self.embed([""] * len(prompts))
        return Conditioning(cond, dict(self._uncond_cache[key]))


class SD3Family(FlowMatchingFamily):
    """SD3 and SD3.5 medium/large (and fine-tunes saved by StableDiffusion3Pipeline)."""

    name = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    display_name = "SD3/SD3.5"
    denoiser_class = "SD3Transformer2DModel"
    lora_targets = SD3_LORA_TARGETS

    def default_lora_targets(self, configs: dict[str, dict]) -> tuple[str, ...]:
        if configs["denoiser"].get("dual_attention_layers"):
            return self.lora_targets + SD35_DUAL_ATTENTION_TARGETS
        return self.lora_targets

    def check_sampling(self, configs: dict[str, dict], settings: SamplingSettings) -> None:
        super().check_sampling(configs, settings)
        tokens = settings.resolution // self.vae_scale_factor(configs["vae"]) // PATCH
        limit = configs["denoiser"].get("pos_embed_max_size")
        if limit is not None and tokens > limit:
            most = limit * PATCH * self.vae_scale_factor(configs["vae"])
            raise ConfigError(
                f"sampling.resolution={settings.resolution} is larger than this SD3 "
                f"transformer's position embedding reaches ({most} px)"
            )

    def load_prompt_encoder(
        self, folder: Path, dtype: torch.dtype, resolution: int, options: dict[str, Any]
    ) -> nn.Module:
        (clip_l, clip_g) = load_clip_text_parts(
            folder, (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")), dtype
        )
        t5_tokenizer, t5_encoder = None, None
        if (folder / "text_encoder_3").is_dir():  # SD3 also ships and runs without T5
            t5_tokenizer, t5_encoder = load_t5(folder, "tokenizer_3", "text_encoder_3", dtype)
        transformer_config = read_json(folder / self.denoiser_folder / "config.json")
        return SD3PromptEncoder(
            *clip_l,
            *clip_g,
            t5_tokenizer,
            t5_encoder,
            joint_attention_dim=transformer_config["joint_attention_dim"],
        )

    def predict(
        self, denoiser: nn.Module, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict
    ) -> torch.Tensor:
        return sd3_velocity(denoiser, latents, timestep, inputs)
