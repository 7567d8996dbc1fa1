"""Where a model comes from: a registered name (tiny test models, the toy model), a local
diffusers folder, or a Hugging Face Hub id (local cache first, then a download); any failure
is one line saying what to download and where to put it."""

from __future__ import annotations

from pathlib import Path

from draft_lightning import registry
from draft_lightning.errors import ConfigError
from draft_lightning.hub import snapshot

# Only what sampling needs: real repos also hold multi-GB single-file checkpoints, fp16 and
# non-EMA variants, and .bin duplicates of the safetensors weights.
HUB_PATTERNS = [
    "model_index.json",
    "*/config.json",
    "scheduler/*.json",
    "tokenizer/*",
    "tokenizer_2/*",  # SDXL
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",  # SDXL
]
# A stand-alone VAE repo (e.g. madebyollin/sdxl-vae-fp16-fix) keeps its files at the top.
VAE_HUB_PATTERNS = ["config.json", "diffusion_pytorch_model.safetensors"]


def resolve_pretrained(name: str) -> Path:
    """A local diffusers folder for `name`: a registered name, an existing folder or a hub id."""
    if registry.is_named("models", name) or ":" in name:
        return registry.resolve("models", name, "pretrained_model")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise ConfigError(f"pretrained_model={name!r} is a folder but not a diffusers pipeline")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ConfigError(
            f"pretrained_model={name!r} is neither an existing folder nor a hub id like "
            "'CompVis/stable-diffusion-v1-4'"
        )
    return snapshot(
        name, "model.pretrained_model", HUB_PATTERNS, instead="a local diffusers folder"
    )


def resolve_vae(name: str) -> Path:
    """A folder holding a stand-alone AutoencoderKL (config.json + weights): a local folder
    (a pipeline folder's vae/ also works) or a hub id, cache first like resolve_pretrained."""
    path = Path(name).expanduser()
    if path.is_dir():
        for folder in (path, path / "vae"):
            if (folder / "config.json").is_file():
                return folder
        raise ConfigError(f"pretrained_vae={name!r} is a folder without a VAE config.json")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ConfigError(
            f"pretrained_vae={name!r} is neither an existing folder nor a hub id like "
            "'madebyollin/sdxl-vae-fp16-fix'"
        )
    return snapshot(name, "model.pretrained_vae", VAE_HUB_PATTERNS, instead="a local VAE folder")
