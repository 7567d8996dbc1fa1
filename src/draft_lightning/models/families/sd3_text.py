"""SD3 / SD3.5's frozen text conditioning: CLIP-L, CLIP-G and T5 in one token sequence.

As in diffusers' StableDiffusion3Pipeline.encode_prompt: the penultimate hidden states of
CLIP-L and CLIP-G (both over CLIP-L's 77 tokens) are concatenated along the features,
zero-padded to T5's width, and put in front of T5's hidden states along the sequence (T5's
part is zeros when the T5 encoder is left out, which SD3 supports). The pooled input is the
two CLIP projections (`text_embeds`) concatenated. Classifier-free guidance (scale > 1)
takes the encoded empty prompt as its unconditional input, the pipeline's default negative
prompt.
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

SD3_MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length


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
