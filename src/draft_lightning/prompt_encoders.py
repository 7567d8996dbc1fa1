"""Frozen text encoders turning prompts into UNet conditioning, one per model family.

SD 1.x/2.x condition on one CLIP encoder's last hidden states. SDXL concatenates the
penultimate hidden states of two encoders, and adds the second encoder's pooled (projected)
embedding and six size/crop numbers as extra UNet inputs. Both produce a TextConditioning,
so the sampler and the estimators never ask which family they run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.sampling import TextConditioning


def token_ids(tokenizer, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """Prompts padded/truncated to the tokenizer's full length, as the pipelines do."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


class PromptEncoder(nn.Module):
    """SD 1.x/2.x: the frozen CLIP text encoder with its tokenizer; the empty-prompt
    embedding is cached."""

    def __init__(self, tokenizer, text_encoder: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._uncond_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(token_ids(self.tokenizer, prompts, device))[0]

    def condition(self, prompts: Sequence[str], guidance_scale: float) -> TextConditioning:
        cond = self.embed(prompts)
        if guidance_scale == 1.0:
            return TextConditioning(cond, None)
        key = (cond.device, cond.dtype)
        if key not in self._uncond_cache:
            self._uncond_cache[key] = self.embed([""])
        uncond = self._uncond_cache[key].expand(len(prompts), -1, -1)
        return TextConditioning(cond, uncond)


@dataclass(frozen=True)
class SDXLConditioning:
    """SDXL's size and crop micro-conditioning (the UNet's `time_ids`).

    Args:
        original_size: (height, width) the model is told the training image had; None means
            the sampling resolution (what diffusers' pipeline does).
        crops_coords_top_left: (top, left) of the crop the model is told was taken; (0, 0)
            asks for centred, uncropped-looking images.
        target_size: (height, width) of the intended output; None means the resolution.
    """

    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("original_size", "crops_coords_top_left", "target_size"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or min(value) < 0):
                raise ConfigError(
                    f"sdxl_conditioning.{name}={value} must be two non-negative integers"
                )

    def time_ids(self, resolution: int) -> list[int]:
        size = (resolution, resolution)
        return [
            *(self.original_size or size),
            *self.crops_coords_top_left,
            *(self.target_size or size),
        ]


class SDXLPromptEncoder(nn.Module):
    """SDXL: two frozen CLIP encoders. Embedding = both penultimate hidden states side by
    side; the pooled embedding of the second (projected) encoder and the micro-conditioning
    ids go to the UNet as `added_cond_kwargs`.

    With `force_zeros_for_empty_prompt` (SDXL base's setting) the unconditional embeddings
    are zeros rather than the encoded empty prompt, as in diffusers' pipeline.
    """

    def __init__(
        self,
        tokenizers: Sequence,
        text_encoders: Sequence[nn.Module],
        time_ids: Sequence[int],
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        super().__init__()
        self.tokenizers = list(tokenizers)
        self.text_encoders = nn.ModuleList(text_encoders)
        self.time_ids = list(time_ids)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self._uncond_cache: dict[tuple[torch.device, torch.dtype], tuple] = {}

    @property
    def tokenizer(self):
        return self.tokenizers[0]

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate hidden states of both encoders concatenated, pooled embedding)."""
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            device = next(encoder.parameters()).device
            out = encoder(token_ids(tokenizer, prompts, device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            raise ConfigError("SDXL's second text encoder must have a projection (text_embeds)")
        return torch.cat(hidden, dim=-1), pooled

    def added(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = torch.tensor([self.time_ids], dtype=pooled.dtype, device=pooled.device)
        return {"text_embeds": pooled, "time_ids": ids.expand(pooled.shape[0], -1)}

    def condition(self, prompts: Sequence[str], guidance_scale: float) -> TextConditioning:
        cond, pooled = self.embed(prompts)
        if guidance_scale == 1.0:
            return TextConditioning(cond, None, cond_added=self.added(pooled))
        key = (cond.device, cond.dtype)
        if key not in self._uncond_cache:
            if self.force_zeros_for_empty_prompt:
                self._uncond_cache[key] = (
                    cond.new_zeros(1, *cond.shape[1:]),
                    pooled.new_zeros(1, *pooled.shape[1:]),
                )
            else:
                self._uncond_cache[key] = self.embed([""])
        uncond, uncond_pooled = self._uncond_cache[key]
        batch = len(prompts)
        return TextConditioning(
            cond,
            uncond.expand(batch, -1, -1),
            cond_added=self.added(pooled),
            uncond_added=self.added(uncond_pooled.expand(batch, -1)),
        )
