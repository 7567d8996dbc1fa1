"""A tiny, randomly initialised Stable Diffusion 1.x checkpoint built offline.

Model hubs are unreachable where this project is tested, so no real checkpoint can be
downloaded. Rather than mocking the loading code, we build a ~3 M parameter model with
the exact SD 1.x architecture and save it in the exact diffusers folder layout of a real
checkpoint (model_index.json plus unet/, vae/, text_encoder/, tokenizer/, scheduler/).
Tests then load it through the very same ``from_pretrained`` path a real checkpoint
takes, so a bug in that path cannot hide behind a test double.

The tokenizer is the real CLIP BPE tokenizer, rebuilt from the vocabulary file that
open_clip ships inside its package, so prompts tokenize exactly as with SD 1.x.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from draft_lightning.cache import cached_build
from draft_lightning.testing.clip_tokenizer import (
    MAX_LENGTH,
    VOCAB_SIZE,
    write_clip_tokenizer,
)

FORMAT_VERSION = 2
PREDICTION_TYPES = ("epsilon", "v_prediction")

# GroupNorm groups in the UNet and VAE. With one channel per group (32 groups over 32
# channels) every VAE channel is normalised per image, so decoded brightness cannot depend
# on the latent and a brightness reward has nothing to learn. 8 groups give 4-8 channels
# per group, close to real SD (32 groups over 128-512 channels).
NORM_GROUPS = 8

# SD 1.4's scheduler/scheduler_config.json (it ships PNDM; our loader builds DDIM from it).
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}"
        )


def build_tiny_vae(**config):
    """SD's VAE architecture at 32 px with two blocks (factor 2), initialised from the global
    RNG (callers seed it); `config` adds the family's flags (scaling_factor, force_upcast)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=NORM_GROUPS,
        sample_size=32,
        **config,
    )


def build_components(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """Build the pipeline parts in memory (no tokenizer); seeded, so builds are identical.

    Returned separately from :func:`build_tiny_sd` so tests can compare an in-memory
    model against its saved and reloaded copy.
    """
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _check_prediction_type(prediction_type)
    # fork_rng keeps the caller's global RNG untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=NORM_GROUPS,
        )
        # A zero conv_out would make the UNet output identically 0 and kill gradients.
        # diffusers does not zero it today; guard in case a future version does.
        if not unet.conv_out.weight.detach().any():
            torch.nn.init.normal_(unet.conv_out.weight, std=0.02)

        torch.manual_seed(seed + 1)
        vae = build_tiny_vae(scaling_factor=0.18215)

        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=VOCAB_SIZE,
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=MAX_LENGTH,
                projection_dim=32,
                pad_token_id=VOCAB_SIZE - 1,  # <|endoftext|>, SD 1.x pads with eos
                bos_token_id=VOCAB_SIZE - 2,
                eos_token_id=VOCAB_SIZE - 1,
            )
        )

    # from_config (unlike the constructor) keeps clip_sample, which PNDM does not use but
    # SD 1.4's file carries and DDIM needs (DDIM's own default is clip_sample=True).
    scheduler = PNDMScheduler.from_config(
        {**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type}
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def build_tiny_sd(folder: str | Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a complete SD-1.x-layout pipeline folder with random, seeded weights.

    ``prediction_type="v_prediction"`` gives an SD2-style v-prediction variant.
    """
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    parts = build_components(seed, prediction_type)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tok_dir))
    pipe = StableDiffusionPipeline(
        **parts,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    # Replace whatever the tokenizer's own save wrote with SD 1.x's exact file set.
    shutil.rmtree(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer")
    return folder


def _folder_name(prediction_type: str) -> str:
    _check_prediction_type(prediction_type)
    kind = {"epsilon": "sd1", "v_prediction": "sd2v"}[prediction_type]
    return f"tiny-{kind}-v{FORMAT_VERSION}"


def tiny_sd_path(cache_dir: str | Path | None = None, prediction_type: str = "epsilon") -> Path:
    """Return the cached tiny model folder, building it once if it is absent."""
    return cached_build(
        _folder_name(prediction_type),
        lambda folder: build_tiny_sd(folder, prediction_type=prediction_type),
        cache_dir,
    )


def tiny_sd_v_path(cache_dir: str | Path | None = None) -> Path:
    """The SD-2-style v-prediction variant (registered as tiny:sd-v)."""
    return tiny_sd_path(cache_dir, prediction_type="v_prediction")
