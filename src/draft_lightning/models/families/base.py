"""What differs between model families, as one interface; one file per family implements it.

A family knows which parts a checkpoint folder holds and how to load them, how prompts
become the denoiser's inputs, how the denoiser is called, the latent shape (and packing),
how latents decode to images, its default LoRA targets, which diffusers pipeline class writes
and reads its LoRA files, and which sampler kind it uses. Everything else (the gradient-window
loop, estimators, rewards, data, logging, checkpoints) is shared and never asks which family
it runs.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.samplers.base import Sampler
from draft_lightning.samplers.settings import SamplingSettings


class ModelFamily(ABC):
    """One kind of text-to-image checkpoint (SD 1.x/2.x, SDXL, ...)."""

    name: ClassVar[str]
    # model_index.json `_class_name`s this family loads; the first one writes its LoRA files.
    pipeline_classes: ClassVar[tuple[str, ...]]
    display_name: ClassVar[str]
    denoiser_folder: ClassVar[str] = "unet"
    denoiser_class: ClassVar[str] = "UNet2DConditionModel"
    lora_component: ClassVar[str] = "unet"  # the pipeline part the adapter belongs to
    lora_targets: ClassVar[tuple[str, ...]]
    # Family-specific loading options (DraftModule arguments), name -> default value.
    options: ClassVar[dict[str, Any]] = {}

    @property
    def pipeline_class(self) -> str:
        """The diffusers pipeline class that writes and reads this family's LoRA files."""
        return self.pipeline_classes[0]

    # --- before any weights load ----------------------------------------------------------

    def read_configs(self, folder: Path, vae_folder: Path | None = None) -> dict[str, dict]:
        """The denoiser's and the VAE's configs (no weights)."""
        import diffusers

        denoiser = getattr(diffusers, self.denoiser_class)
        vae = diffusers.AutoencoderKL
        return {
            "denoiser": dict(denoiser.load_config(folder, subfolder=self.denoiser_folder)),
            "vae": dict(
                vae.load_config(vae_folder)
                if vae_folder is not None
                else vae.load_config(folder, subfolder="vae")
            ),
        }

    def check(self, folder: Path, configs: dict[str, dict], options: dict[str, Any]) -> None:
        """Refuse, from configs alone, settings this family cannot use."""
        return None

    def check_sampling(self, configs: dict[str, dict], settings: SamplingSettings) -> None:
        """Refuse, from configs alone, sampling settings this model cannot use."""
        factor = self.vae_scale_factor(configs["vae"])
        if settings.resolution % factor:
            raise ConfigError(
                f"sampling.resolution={settings.resolution} is not divisible by the VAE's "
                f"downsampling factor {factor}"
            )

    def default_lora_targets(self, configs: dict[str, dict]) -> tuple[str, ...]:
        """The adapter's target modules when lora.target_modules is not set."""
        return self.lora_targets

    def skeleton(self, configs: dict[str, dict]) -> nn.Module:
        """The denoiser built on the meta device: its module names, no memory."""
        import diffusers

        with torch.device("meta"):
            return getattr(diffusers, self.denoiser_class).from_config(configs["denoiser"])

    def vae_scale_factor(self, vae_config: dict) -> int:
        return 2 ** (len(vae_config["block_out_channels"]) - 1)

    def latent_shape(self, configs: dict[str, dict], resolution: int) -> tuple[int, ...]:
        """The shape of one sample's initial noise (before any packing)."""
        side = resolution // self.vae_scale_factor(configs["vae"])
        return (configs["vae"]["latent_channels"], side, side)

    # --- loading ---------------------------------------------------------------------------

    @abstractmethod
    def load_prompt_encoder(
        self, folder: Path, dtype: torch.dtype, resolution: int, options: dict[str, Any]
    ) -> nn.Module:
        """The frozen text encoder(s); `.condition(prompts, guidance_scale)` -> Conditioning."""

    def load_denoiser(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        import diffusers

        cls = getattr(diffusers, self.denoiser_class)
        return cls.from_pretrained(folder, subfolder=self.denoiser_folder, torch_dtype=dtype)

    def load_vae(self, folder: Path, dtype: torch.dtype, vae_folder: Path | None) -> nn.Module:
        from diffusers import AutoencoderKL

        if vae_folder is not None:
            return AutoencoderKL.from_pretrained(vae_folder, torch_dtype=dtype)
        return AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)

    @abstractmethod
    def make_sampler(
        self, denoiser: nn.Module, folder: Path, settings: SamplingSettings, **options
    ) -> Sampler:
        """This family's sampler over `denoiser` (options: see samplers/base.py)."""

    # --- one step and the way out ----------------------------------------------------------

    @abstractmethod
    def predict(
        self, denoiser: nn.Module, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict
    ) -> torch.Tensor:
        """One denoiser call on (packed) latents."""

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the sampler and denoiser see them (identity for UNets)."""
        return latents

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """Back to the VAE's (B, C, H, W)."""
        return latents

    @abstractmethod
    def decode(self, vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
        """Unpacked latents to images in [0, 1] (float32)."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: the model folder is incomplete") from None


def token_ids(tokenizer, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """Prompts padded/truncated to the tokenizer's full length, as the pipelines do."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def load_clip_text_parts(
    folder: Path, names: Sequence[tuple[str, str]], dtype: torch.dtype
) -> list[tuple[object, nn.Module]]:
    """Tokenizer and frozen CLIP text encoder pairs, loaded with the classes their configs
    name (CLIPTextModel, or CLIPTextModelWithProjection for a projected encoder)."""
    import transformers
    from transformers import CLIPTokenizer

    parts = []
    for tokenizer_dir, encoder_dir in names:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer_dir)
        architectures = read_json(folder / encoder_dir / "config.json").get("architectures")
        class_name = (architectures or ["CLIPTextModel"])[0]
        if class_name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            raise ConfigError(
                f"{folder / encoder_dir} is a {class_name}; expected a CLIP text encoder"
            )
        encoder = getattr(transformers, class_name).from_pretrained(
            folder, subfolder=encoder_dir, dtype=dtype
        )
        parts.append((tokenizer, frozen(encoder)))
    return parts


def frozen(module: nn.Module) -> nn.Module:
    """No gradient, eval mode: frozen parts never train."""
    module.requires_grad_(False)
    module.eval()
    return module
