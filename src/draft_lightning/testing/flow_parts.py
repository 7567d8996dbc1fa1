"""Parts the tiny FLUX.1 and SD3 stand-ins share: the 16-channel VAE, the T5 encoder, CLIP
text configs and tokenizer folders.

Every builder draws its weights from the global RNG; callers seed it (and fork it, so the
caller's RNG stays untouched).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from draft_lightning.testing.clip_tokenizer import (
    EOS_TOKEN,
    MAX_LENGTH,
    VOCAB_SIZE,
    write_clip_tokenizer,
)
from draft_lightning.testing.t5_tokenizer import vocab_size, write_t5_tokenizer
from draft_lightning.testing.tiny_sd import NORM_GROUPS

LATENT_CHANNELS = 16  # FLUX.1's and SD3's VAEs both have 16 latent channels
T5_WIDTH = 64  # the tiny T5's d_model: the transformers' joint_attention_dim
CLIP_PAD = EOS_TOKEN  # CLIP-L's tokenizer pads with <|endoftext|>
OPENCLIP_PAD = "!"  # OpenCLIP-G's tokenizer (SD3's tokenizer_2) pads with "!"


def build_flow_vae(scaling_factor: float, shift_factor: float):
    """A two-block AutoencoderKL (factor 2) with the flags of FLUX.1's and SD3's VAEs: 16
    latent channels, a scaling and a shift factor, no quant_conv/post_quant_conv."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=NORM_GROUPS,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_t5_encoder():
    """A two-layer T5 v1.1-style encoder (gated GELU, untied embeddings) over our tokenizer's
    vocabulary, padded to a multiple of 128 as T5's 32,128 rows are."""
    from transformers import T5Config, T5EncoderModel

    rows = -(-vocab_size() // 128) * 128
    return T5EncoderModel(
        T5Config(
            vocab_size=rows,
            d_model=T5_WIDTH,
            d_kv=16,
            d_ff=2 * T5_WIDTH,
            num_layers=2,
            num_heads=T5_WIDTH // 16,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            is_encoder_decoder=False,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def clip_text_config(hidden: int, pad_token: str, projection_dim: int | None = None):
    """A three-layer CLIP text config (three, so the penultimate layer SD3 reads differs from
    the last) over CLIP's real 49,408-token vocabulary."""
    from transformers import CLIPTextConfig

    pad_token_id = VOCAB_SIZE - 1 if pad_token == CLIP_PAD else 0  # "!" is id 0
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=projection_dim or hidden,
        hidden_act="quick_gelu",
        pad_token_id=pad_token_id,
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
    )


def load_tokenizers(clip_pads: tuple[str, ...]) -> tuple[list, object]:
    """CLIP tokenizers (one per pad token) and the T5 tokenizer, loaded through
    from_pretrained from freshly written files, for a pipeline's constructor."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        clips = [
            CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp) / str(i), pad))
            for i, pad in enumerate(clip_pads)
        ]
        t5 = T5TokenizerFast.from_pretrained(write_t5_tokenizer(Path(tmp) / "t5"))
    return clips, t5


def rewrite_tokenizer_folders(folder: Path, clip_pads: dict[str, str], t5_name: str) -> None:
    """Replace what the tokenizers' own save_pretrained wrote by our exact file sets, so the
    saved folder does not depend on the transformers version that wrote it."""
    for name, pad in clip_pads.items():
        shutil.rmtree(folder / name)
        write_clip_tokenizer(folder / name, pad_token=pad)
    shutil.rmtree(folder / t5_name)
    write_t5_tokenizer(folder / t5_name)
