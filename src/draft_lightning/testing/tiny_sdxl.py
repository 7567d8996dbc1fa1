"""A tiny, randomly initialised SDXL checkpoint built offline (see tiny_sd.py for why).

It has every piece of SDXL's architecture that reward fine-tuning touches: two CLIP text
encoders (the second with a projection, whose pooled embedding conditions the UNet), a
UNet whose cross-attention width is the two encoders' widths concatenated, the
"text_time" added embedding for (original size, crop, target size), transformer blocks of
depth > 1, an fp16-unsafe VAE flag (force_upcast) and SDXL's latent scale 0.13025. It is
saved by diffusers' StableDiffusionXLPipeline in the layout of
stabilityai/stable-diffusion-xl-base-1.0 and loaded back through from_pretrained.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from draft_lightning.cache import cached_build
from draft_lightning.testing.clip_tokenizer import MAX_LENGTH, VOCAB_SIZE, write_clip_tokenizer
from draft_lightning.testing.tiny_sd import NORM_GROUPS, SD_SCHEDULER_CONFIG, build_tiny_vae

FORMAT_VERSION = 1
TEXT_WIDTHS = (32, 32)  # hidden sizes of text_encoder and text_encoder_2
PROJECTION_DIM = 32  # text_encoder_2's pooled projection
TIME_EMBED_DIM = 8  # per micro-conditioning number; SDXL has 6 of them
# SDXL base 1.0 ships EulerDiscrete with these values; our loader builds DDIM from them.
SDXL_SCHEDULER_CONFIG = {
    **SD_SCHEDULER_CONFIG,
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
    "sample_max_value": 1.0,
    "prediction_type": "epsilon",
}


def _text_config(hidden: int, pad_token_id: int, projection: int = PROJECTION_DIM):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,  # SDXL conditions on the penultimate layer: keep it non-trivial
        max_position_embeddings=MAX_LENGTH,
        projection_dim=projection,
        hidden_act="gelu",
        pad_token_id=pad_token_id,
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
    )


def build_sdxl_components(seed: int = 0) -> dict:
    """The SDXL parts in memory (no tokenizers), seeded so builds are identical."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=sum(TEXT_WIDTHS),
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + PROJECTION_DIM,
            norm_num_groups=NORM_GROUPS,
        )
        torch.manual_seed(seed + 1)
        vae = build_tiny_vae(scaling_factor=0.13025, force_upcast=True)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(_text_config(TEXT_WIDTHS[0], VOCAB_SIZE - 1))
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(TEXT_WIDTHS[1], 0))
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "scheduler": scheduler,
    }


def build_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """Write a complete SDXL-layout pipeline folder with random, seeded weights.

    Tokenizers as in SDXL base: the first pads with <|endoftext|>, the second with "!".
    """
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tok_dir) / "1"))
        tokenizer_2 = CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(Path(tok_dir) / "2", pad_token="!")
        )
    pipe = StableDiffusionXLPipeline(
        **build_sdxl_components(seed),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        shutil.rmtree(folder / name)
        write_clip_tokenizer(folder / name, pad_token=pad)
    return folder


def tiny_sdxl_path(cache_dir: str | Path | None = None) -> Path:
    """The cached tiny SDXL folder, built once if absent (safe under concurrent callers)."""
    return cached_build(f"tiny-sdxl-v{FORMAT_VERSION}", build_tiny_sdxl, cache_dir)
