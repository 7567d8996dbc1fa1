"""Tiny random stand-ins for the reward models, saved in the published on-disk formats.

Hubs are unreachable where this project is tested, so the real reward weights cannot be
used. As with the tiny Stable Diffusion (testing/tiny_sd.py), we do not mock the loaders:
we write small random models in the exact formats of the real files and load them through
the very same code, which differs only in which file or folder is resolved.

| name             | stands in for                         | format on disk                |
|------------------|---------------------------------------|-------------------------------|
| `tiny:clip`      | an OpenCLIP checkpoint (tag or file)  | open_clip_model.safetensors   |
| `tiny:hpsv2`     | HPS_v2(.1)_compressed.pt              | torch file {"state_dict": sd} |
| `tiny:aesthetic` | sac+logos+ava1-l14-linearMSE.pth      | torch file, MLP state dict    |
| `tiny:pickscore` | PickScore_v1 + its CLIP processor     | transformers folder           |

`tiny:clip` as an OpenCLIP *model name* is a 2-layer ViT/text transformer registered with
open_clip under `TINY_OPEN_CLIP_NAME`; the weight files above all fit it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from draft_lightning.cache import cached_build
from draft_lightning.errors import ConfigError

FORMAT_VERSION = 1
TINY_OPEN_CLIP_NAME = "draft-tiny-clip"
TINY_CLIP_MODEL = "tiny:clip"
TINY_FILES = {
    "tiny:clip": "clip/open_clip_model.safetensors",
    "tiny:hpsv2": "hpsv2/HPS_v2.1_compressed.pt",
    "tiny:aesthetic": "aesthetic/sac+logos+ava1-l14-linearMSE.pth",
    "tiny:pickscore": "pickscore",
}
_COMPLETE = "COMPLETE"
_CONFIG_FILE = f"{TINY_OPEN_CLIP_NAME}.json"

# ViT: 224 px in 32 px patches (49 tokens), so preprocessing runs at the real CLIP size.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def tiny_path(name: str, what: str = "weights") -> Path:
    """The file or folder of a built-in stand-in (built once into the cache)."""
    if name not in TINY_FILES:
        choices = ", ".join(TINY_FILES)
        raise ConfigError(f"{what}={name!r} is not a tiny stand-in (choose from {choices})")
    return tiny_rewards_root() / TINY_FILES[name]


def tiny_rewards_root(cache_dir: str | Path | None = None) -> Path:
    """The cached stand-in folder, built once if absent (atomically; see cache.cached_build)."""

    def build(folder: Path) -> None:
        build_tiny_rewards(folder)
        (folder / _COMPLETE).write_text("ok\n")

    return cached_build(f"tiny-rewards-v{FORMAT_VERSION}", build, cache_dir, marker=_COMPLETE)


# Resolvers registered in pyproject.toml (entry points, see draft_lightning.registry).
def tiny_clip_config() -> Path:
    """The tiny OpenCLIP architecture's config, registered with open_clip by its file stem."""
    return tiny_rewards_root() / _CONFIG_FILE


def register_tiny_clip() -> str:
    """Make open_clip know the tiny architecture; returns its open_clip model name."""
    import open_clip

    if TINY_OPEN_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(tiny_clip_config())
    return TINY_OPEN_CLIP_NAME


def tiny_clip_weights() -> Path:
    return tiny_path("tiny:clip")


def tiny_hpsv2_weights() -> Path:
    return tiny_path("tiny:hpsv2")


def tiny_aesthetic_weights() -> Path:
    return tiny_path("tiny:aesthetic")


def tiny_pickscore_folder() -> Path:
    return tiny_path("tiny:pickscore")


def build_tiny_rewards(folder: str | Path, seed: int = 0) -> Path:
    """Write every stand-in into `folder` with seeded random weights."""
    folder = Path(folder)
    (folder / _CONFIG_FILE).write_text(json.dumps(TINY_OPEN_CLIP_CONFIG, indent=2) + "\n")
    clip = _open_clip_model(folder, seed)
    _save_safetensors(clip.state_dict(), folder / TINY_FILES["tiny:clip"])
    hps = _open_clip_model(folder, seed + 1)  # "fine-tuned": same architecture, other weights
    _torch_save({"state_dict": hps.state_dict()}, folder / TINY_FILES["tiny:hpsv2"])
    head = _aesthetic_head(TINY_OPEN_CLIP_CONFIG["embed_dim"], seed + 2)
    layers = {f"layers.{k}": v for k, v in head.state_dict().items()}  # the published keys
    _torch_save(layers, folder / TINY_FILES["tiny:aesthetic"])
    _write_pickscore(folder / TINY_FILES["tiny:pickscore"], seed + 3)
    return folder


def _open_clip_model(folder: Path, seed: int) -> torch.nn.Module:
    import open_clip

    if TINY_OPEN_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(folder / _CONFIG_FILE)
    logger = logging.getLogger()  # open_clip warns on the root logger about random init
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model(TINY_OPEN_CLIP_NAME, pretrained=None)
    finally:
        logger.setLevel(level)


def _aesthetic_head(input_dim: int, seed: int) -> torch.nn.Module:
    from draft_lightning.rewards.aesthetic import aesthetic_mlp

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return aesthetic_mlp(input_dim)


def _write_pickscore(folder: Path, seed: int) -> None:
    """A CLIPModel folder that also holds its CLIPProcessor (real PickScore splits the two)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from draft_lightning.testing.clip_tokenizer import write_clip_tokenizer

    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "image_size": 224,
            "patch_size": 32,
            "hidden_size": 64,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        },
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    # The processor as the Hub's CLIP repos lay it out: preprocessor_config.json beside the
    # slow-tokenizer files (vocab.json, merges.txt, ...), read by CLIPProcessor.from_pretrained.
    CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(folder)
    write_clip_tokenizer(folder)


def _save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _torch_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
