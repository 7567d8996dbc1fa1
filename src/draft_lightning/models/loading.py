"""Where a model comes from: a registered name (tiny test models, the toy model), a local
diffusers folder, or a Hugging Face Hub id (local cache first, then a download); any failure
is one line saying what to download and where to put it."""

from __future__ import annotations

from pathlib import Path

from draft_lightning import registry
from draft_lightning.errors import ConfigError
from draft_lightning.hub import snapshot

# Only what sampling needs: real repos also hold multi-GB single-file checkpoints (FLUX.1-dev's
# flux1-dev.safetensors, SD3.5's sd3.5_medium.safetensors), fp16 and non-EMA variants, and
# .bin duplicates of the safetensors weights. Large parts come in shards with an index.
HUB_PATTERNS = [
    "model_index.json",
    "*/config.json",
    "scheduler/*.json",
    "tokenizer/*",
    "tokenizer_2/*",  # SDXL's second CLIP; FLUX.1's T5; SD3's CLIP-G
    "tokenizer_3/*",  # SD3's T5
    "unet/diffusion_pytorch_model.safetensors",
    "transformer/diffusion_pytorch_model.safetensors",  # SD3.5-Medium
    "transformer/diffusion_pytorch_model-*-of-*.safetensors",  # FLUX.1, SD3.5-Large
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",  # SDXL's and SD3's second CLIP
    "text_encoder_2/model-*-of-*.safetensors",  # FLUX.1's T5-XXL
    "text_encoder_2/model.safetensors.index.json",
    "text_encoder_3/model-*-of-*.safetensors",  # SD3's T5-XXL
    "text_encoder_3/model.safetensors.index.json",
]
# Repos that download only after their licence is accepted on the hub page (logged in).
GATED_REPOS = ("black-forest-labs/FLUX.1-dev", "stabilityai/stable-diffusion-3")
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
        name,
        "model.pretrained_model",
        HUB_PATTERNS,
        instead="a local diffusers folder",
        note=gated_note(name),
    )


def gated_note(repo_id: str) -> str:
    """What to do first for a gated repo (empty for an open one)."""
    if not repo_id.startswith(GATED_REPOS):
        return ""
    return (
        f"{repo_id} is gated: accept its licence at https://huggingface.co/{repo_id} and log "
        "in (`hf auth login`) first, then "
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
