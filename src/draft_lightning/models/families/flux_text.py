"""FLUX.1's frozen text conditioning: T5's hidden states and CLIP-L's pooled embedding.

As in diffusers' FluxPipeline.encode_prompt: T5 reads the prompt padded to
`max_sequence_length` tokens (512 for FLUX.1-dev; schnell was trained with 256) and gives
the token sequence the transformer attends to; CLIP-L gives only its pooled output (the
final-layer-normed hidden state at the end-of-text token), which joins the timestep
embedding. FLUX.1-dev is guidance-distilled: the guidance scale is one more input, with no
classifier-free guidance (one transformer call per step). Schnell has no guidance input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from draft_lightning.models.families.t5_text import (
    encoder_device,
    padded_token_ids,
    t5_hidden_states,
)
from draft_lightning.samplers.conditioning import Conditioning

FLUX_MAX_SEQUENCE_LENGTH = 512  # diffusers' limit and FLUX.1-dev's default


class FluxPromptEncoder(nn.Module):
    """Prompts to FLUX transformer inputs: `encoder_hidden_states` (T5), `pooled_projections`
    (CLIP) and, when the transformer has a guidance embedding, `guidance` (float32, one value
    per row, as the pipeline passes it).

    Args:
        guidance_embeds: whether the transformer takes a guidance value (its config's
            `guidance_embeds`: True for FLUX.1-dev, False for schnell). Without one, the
            guidance scale passed to `condition` is ignored, as FluxPipeline ignores it.
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
