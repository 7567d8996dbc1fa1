"""A tiny, randomly initialised SD3.5-Medium checkpoint built offline (see
testing/tiny_sd.py for why tests run on stand-ins saved and loaded like real ones).

It keeps every piece of SD3/SD3.5-Medium that sampling and reward fine-tuning touch: an
MMDiT (SD3Transformer2DModel) whose first block has SD3.5-M's second, image-only attention
(`attn2`, dual attention) and RMS qk-norm, two CLIP text encoders with projections (an
L-like and a G-like one) whose penultimate hidden states are concatenated and zero-padded
to the T5 width, a T5 encoder, a 16-channel VAE with SD3's scaling and shift factors, and the
flow matching scheduler with SD3's static shift 3. Saved by diffusers'
StableDiffusion3Pipeline in the layout of stabilityai/stable-diffusion-3.5-medium and loaded
back through from_pretrained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from draft_lightning.cache import cached_build
from draft_lightning.testing.flow_parts import (
    CLIP_PAD,
    LATENT_CHANNELS,
    OPENCLIP_PAD,
    T5_WIDTH,
    build_flow_vae,
    build_t5_encoder,
    clip_text_config,
    load_tokenizers,
    rewrite_tokenizer_folders,
)

FORMAT_VERSION = 1
# Hidden sizes of the CLIP-L and CLIP-G stand-ins (768 and 1280 in SD3). Concatenated they
# are narrower than T5 (2048 < 4096 in SD3), so the pipeline's zero padding is exercised.
CLIP_WIDTHS = (16, 32)
HEAD_DIM = 16
NUM_HEADS = 2
# stabilityai/stable-diffusion-3.5-medium's scheduler/scheduler_config.json (SD3 has the same).
SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}
SCALING_FACTOR = 1.5305
SHIFT_FACTOR = 0.0609


def build_sd3_components(seed: int = 0) -> dict:
    """The SD3 parts in memory (no tokenizers), seeded so builds are identical."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    assert sum(CLIP_WIDTHS) < T5_WIDTH, "the CLIP embeddings must be padded up to T5's width"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=16,  # latent pixels: 32 px images through the factor-2 VAE
            patch_size=2,
            in_channels=LATENT_CHANNELS,
            num_layers=2,
            attention_head_dim=HEAD_DIM,
            num_attention_heads=NUM_HEADS,
            joint_attention_dim=T5_WIDTH,
            caption_projection_dim=HEAD_DIM * NUM_HEADS,
            pooled_projection_dim=sum(CLIP_WIDTHS),  # the two projections concatenated
            out_channels=LATENT_CHANNELS,
            pos_embed_max_size=32,  # up to 64 latent pixels a side
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        )
        torch.manual_seed(seed + 1)
        vae = build_flow_vae(SCALING_FACTOR, SHIFT_FACTOR)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModelWithProjection(clip_text_config(CLIP_WIDTHS[0], CLIP_PAD))
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(CLIP_WIDTHS[1], OPENCLIP_PAD))
        torch.manual_seed(seed + 4)
        text_encoder_3 = build_t5_encoder()
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": text_encoder_3,
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG),
    }


def build_tiny_sd3(folder: str | Path, seed: int = 0) -> Path:
    """Write an SD3.5-Medium-layout pipeline folder with random, seeded weights.

    Tokenizers as in SD3: CLIP-L's pads with <|endoftext|>, CLIP-G's with "!", then T5's.
    """
    from diffusers import StableDiffusion3Pipeline

    folder = Path(folder)
    (tokenizer, tokenizer_2), tokenizer_3 = load_tokenizers((CLIP_PAD, OPENCLIP_PAD))
    pipe = StableDiffusion3Pipeline(
        **build_sd3_components(seed),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(folder)
    rewrite_tokenizer_folders(
        folder, {"tokenizer": CLIP_PAD, "tokenizer_2": OPENCLIP_PAD}, t5_name="tokenizer_3"
    )
    return folder


def tiny_sd3_path(cache_dir: str | Path | None = None) -> Path:
    """The cached tiny SD3.5-Medium stand-in, built once if absent (safe under concurrency)."""
    return cached_build(f"tiny-sd3.5m-v{FORMAT_VERSION}", build_tiny_sd3, cache_dir)
