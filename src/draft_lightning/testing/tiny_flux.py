"""A tiny, randomly initialised FLUX.1 checkpoint built offline (see testing/tiny_sd.py
for why tests run on stand-ins saved and loaded like real checkpoints).

It keeps every piece of FLUX.1 that sampling and reward fine-tuning touch: a
FluxTransformer2DModel with double- and single-stream blocks and 3-axis rotary position
embeddings over packed 2x2 latent patches, the guidance embedding of the guidance-distilled
FLUX.1-dev (or none, like FLUX.1-schnell), CLIP-L's pooled embedding and T5's hidden states
as text conditioning, a 16-channel VAE with FLUX's scaling and shift factors, and the flow
matching scheduler with each variant's shift. Saved by diffusers' FluxPipeline in the layout
of black-forest-labs/FLUX.1-dev and loaded back through from_pretrained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from draft_lightning.cache import cached_build
from draft_lightning.testing.flow_parts import (
    CLIP_PAD,
    LATENT_CHANNELS,
    T5_WIDTH,
    build_flow_vae,
    build_t5_encoder,
    clip_text_config,
    load_tokenizers,
    rewrite_tokenizer_folders,
)

FORMAT_VERSION = 1
CLIP_WIDTH = 32  # the CLIP-L stand-in's hidden size: FLUX's pooled_projection_dim
HEAD_DIM = 16
AXES_DIMS_ROPE = (4, 6, 6)  # (index, row, col) rotary dims; they sum to the head dim
# black-forest-labs/FLUX.1-dev's scheduler/scheduler_config.json: the shift depends on the
# image's token count (mu from base_shift at 256 tokens to max_shift at 4096).
FLUX_DEV_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# FLUX.1-schnell's: no shift at all (static shift 1, no dynamic shifting).
FLUX_SCHNELL_SCHEDULER_CONFIG = {
    **FLUX_DEV_SCHEDULER_CONFIG,
    "shift": 1.0,
    "use_dynamic_shifting": False,
}
# FLUX.1's VAE (ae.safetensors) latent statistics.
SCALING_FACTOR = 0.3611
SHIFT_FACTOR = 0.1159


def build_flux_components(seed: int = 0, guidance_embeds: bool = True) -> dict:
    """The FLUX parts in memory (no tokenizers), seeded so builds are identical."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * LATENT_CHANNELS,  # 2x2 patches of 16 channels, packed
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=HEAD_DIM,
            num_attention_heads=2,
            joint_attention_dim=T5_WIDTH,
            pooled_projection_dim=CLIP_WIDTH,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=AXES_DIMS_ROPE,
        )
        torch.manual_seed(seed + 1)
        vae = build_flow_vae(SCALING_FACTOR, SHIFT_FACTOR)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(clip_text_config(CLIP_WIDTH, CLIP_PAD))
        torch.manual_seed(seed + 3)
        text_encoder_2 = build_t5_encoder()
    config = FLUX_DEV_SCHEDULER_CONFIG if guidance_embeds else FLUX_SCHNELL_SCHEDULER_CONFIG
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(config),
    }


def build_tiny_flux(folder: str | Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Write a FLUX.1-layout pipeline folder with random, seeded weights.

    `guidance_embeds=True` gives a FLUX.1-dev stand-in (guidance-distilled, dynamic shift);
    False a FLUX.1-schnell stand-in (no guidance input, no shift).
    """
    from diffusers import FluxPipeline

    folder = Path(folder)
    (clip_tokenizer,), t5_tokenizer = load_tokenizers((CLIP_PAD,))
    pipe = FluxPipeline(
        **build_flux_components(seed, guidance_embeds),
        tokenizer=clip_tokenizer,
        tokenizer_2=t5_tokenizer,
    )
    pipe.save_pretrained(folder)
    rewrite_tokenizer_folders(folder, {"tokenizer": CLIP_PAD}, t5_name="tokenizer_2")
    return folder


def tiny_flux_path(cache_dir: str | Path | None = None) -> Path:
    """The cached tiny FLUX.1-dev stand-in, built once if absent (safe under concurrency)."""
    return cached_build(f"tiny-flux-dev-v{FORMAT_VERSION}", build_tiny_flux, cache_dir)


def tiny_flux_schnell_path(cache_dir: str | Path | None = None) -> Path:
    """The cached tiny FLUX.1-schnell stand-in, built once if absent."""
    return cached_build(
        f"tiny-flux-schnell-v{FORMAT_VERSION}",
        lambda folder: build_tiny_flux(folder, guidance_embeds=False),
        cache_dir,
    )
