"""SDXL: two CLIP text encoders (the second projected and pooled), size/crop
micro-conditioning as added UNet inputs, and a VAE that needs float32 in half precision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.models.families.base import load_clip_text_parts, read_json, token_ids
from draft_lightning.models.families.sd import StableDiffusionFamily
from draft_lightning.samplers.conditioning import Conditioning


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
    """Two frozen CLIP encoders. Embedding = both penultimate hidden states side by side; the
    pooled embedding of the second (projected) encoder and the micro-conditioning ids go to
    the UNet as `added_cond_kwargs`.

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

    def inputs(self, hidden: torch.Tensor, pooled: torch.Tensor) -> dict[str, Any]:
        ids = torch.tensor([self.time_ids], dtype=pooled.dtype, device=pooled.device)
        added = {"text_embeds": pooled, "time_ids": ids.expand(pooled.shape[0], -1)}
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": added}

    def condition(self, prompts: Sequence[str], guidance_scale: float) -> Conditioning:
        cond, pooled = self.embed(prompts)
        if guidance_scale == 1.0:
            return Conditioning(self.inputs(cond, pooled))
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
        return Conditioning(
            self.inputs(cond, pooled),
            self.inputs(uncond.expand(batch, -1, -1), uncond_pooled.expand(batch, -1)),
        )


class SDXLFamily(StableDiffusionFamily):
    """SDXL base (and fine-tunes saved by StableDiffusionXLPipeline)."""

    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    display_name = "SDXL"
    text_parts = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    options = {"sdxl_conditioning": SDXLConditioning()}

    def check(self, folder: Path, configs: dict[str, dict], options: dict[str, Any]) -> None:
        unet_config = configs["denoiser"]
        if unet_config.get("addition_embed_type") != "text_time":
            raise ConfigError(
                f"{folder} is an SDXL pipeline but its UNet has addition_embed_type="
                f"{unet_config.get('addition_embed_type')!r}, not 'text_time'"
            )
        projection = read_json(folder / "text_encoder_2" / "config.json").get("projection_dim")
        widths = sum(
            read_json(folder / encoder / "config.json")["hidden_size"]
            for _, encoder in self.text_parts
        )
        expected = unet_config["projection_class_embeddings_input_dim"]
        passed = 6 * unet_config["addition_time_embed_dim"] + (projection or 0)
        if passed != expected or widths != unet_config["cross_attention_dim"]:
            raise ConfigError(
                f"{folder}: the text encoders (widths {widths}, projection {projection}) do not "
                f"fit the UNet (cross_attention_dim {unet_config['cross_attention_dim']}, added "
                f"embedding input {expected})"
            )

    def load_prompt_encoder(
        self, folder: Path, dtype: torch.dtype, resolution: int, options: dict[str, Any]
    ) -> nn.Module:
        parts = load_clip_text_parts(folder, self.text_parts, dtype)
        index_file = folder / "model_index.json"
        index = read_json(index_file) if index_file.is_file() else {}
        return SDXLPromptEncoder(
            [tokenizer for tokenizer, _ in parts],
            [encoder for _, encoder in parts],
            options["sdxl_conditioning"].time_ids(resolution),
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
        )
