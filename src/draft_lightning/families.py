"""Model families: what differs between SD 1.x/2.x and SDXL, in one small object each.

The family is chosen by what the checkpoint is (model_index.json's pipeline class), never
by flags in the training step. A family knows which text encoders to load and how they
condition the UNet, how to check its configs before any weights load, and which diffusers
pipeline class writes (and reads) its LoRA files. Everything else (sampler, estimators,
rewards, data, logging, checkpoints) is shared. SD 2.x needs no family of its own: its
v-prediction lives in the scheduler config, which diffusers' DDIM step already honours.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.prompt_encoders import PromptEncoder, SDXLConditioning, SDXLPromptEncoder


class ModelFamily:
    """SD 1.x and 2.x: one CLIP text encoder, conditioning on its last hidden states."""

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    text_parts: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)

    def check(self, folder: Path, unet_config: dict, conditioning: SDXLConditioning) -> None:
        """Refuse, from configs alone, settings this family cannot use."""
        if unet_config.get("addition_embed_type") == "text_time":
            raise ConfigError(
                f"{folder} is a {self.pipeline_class} whose UNet expects SDXL's added "
                "conditioning (addition_embed_type='text_time'): fix model_index.json"
            )
        if conditioning != SDXLConditioning():
            raise ConfigError(
                "sdxl_conditioning is set but the model is not SDXL "
                f"({self.pipeline_class}); remove it"
            )

    def load_prompt_encoder(
        self, folder: Path, dtype: torch.dtype, resolution: int, conditioning: SDXLConditioning
    ) -> nn.Module:
        ((tokenizer, encoder),) = _load_text_parts(folder, self.text_parts, dtype)
        return PromptEncoder(tokenizer, encoder)

    def pipeline(self):
        """The diffusers pipeline class, for LoRA I/O (save_lora_weights/load_lora_weights)."""
        import diffusers

        return getattr(diffusers, self.pipeline_class)


class SDXLFamily(ModelFamily):
    """SDXL: two text encoders (the second projected and pooled) and size/crop conditioning."""

    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    text_parts = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    def check(self, folder: Path, unet_config: dict, conditioning: SDXLConditioning) -> None:
        if unet_config.get("addition_embed_type") != "text_time":
            raise ConfigError(
                f"{folder} is an SDXL pipeline but its UNet has addition_embed_type="
                f"{unet_config.get('addition_embed_type')!r}, not 'text_time'"
            )
        projection = _read_json(folder / "text_encoder_2" / "config.json").get("projection_dim")
        widths = sum(
            _read_json(folder / encoder / "config.json")["hidden_size"]
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
        self, folder: Path, dtype: torch.dtype, resolution: int, conditioning: SDXLConditioning
    ) -> nn.Module:
        parts = _load_text_parts(folder, self.text_parts, dtype)
        index_file = folder / "model_index.json"
        index = _read_json(index_file) if index_file.is_file() else {}
        return SDXLPromptEncoder(
            [tokenizer for tokenizer, _ in parts],
            [encoder for _, encoder in parts],
            conditioning.time_ids(resolution),
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
        )


FAMILIES = {family.pipeline_class: family for family in (ModelFamily(), SDXLFamily())}


def family_of(folder: Path) -> ModelFamily:
    """The family of a diffusers folder, from the pipeline class that saved it."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():  # a bare parts folder: SDXL is the one with two encoders
        two_encoders = (folder / "text_encoder_2").is_dir()
        return FAMILIES["StableDiffusionXLPipeline" if two_encoders else "StableDiffusionPipeline"]
    name = _read_json(index_file).get("_class_name")
    if name not in FAMILIES:
        raise ConfigError(
            f"{folder} holds a {name}, which draft_lightning does not train (supported: "
            f"{', '.join(FAMILIES)})"
        )
    return FAMILIES[name]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: the model folder is incomplete") from None


def _load_text_parts(
    folder: Path, names: tuple[tuple[str, str], ...], dtype: torch.dtype
) -> list[tuple[object, nn.Module]]:
    """Tokenizer and frozen text encoder pairs, loaded with the classes their configs name
    (CLIPTextModel, or CLIPTextModelWithProjection for SDXL's second encoder)."""
    import transformers
    from transformers import CLIPTokenizer

    parts = []
    for tokenizer_dir, encoder_dir in names:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer_dir)
        architectures = _read_json(folder / encoder_dir / "config.json").get("architectures")
        class_name = (architectures or ["CLIPTextModel"])[0]
        if class_name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            raise ConfigError(
                f"{folder / encoder_dir} is a {class_name}; expected a CLIP text encoder"
            )
        encoder = getattr(transformers, class_name).from_pretrained(
            folder, subfolder=encoder_dir, dtype=dtype
        )
        encoder.requires_grad_(False)
        encoder.eval()
        parts.append((tokenizer, encoder))
    return parts
