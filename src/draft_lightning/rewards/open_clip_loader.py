"""Building an OpenCLIP model from (model name, weights) the same way for real and tiny weights.

Weights are always resolved to a local file first (an open_clip pretrained tag through its
Hub entry, a path, `hf://...`, or a registered name) and then loaded by
`open_clip.create_model(name, pretrained=<file>)`, which reads safetensors or
`torch.load(weights_only=True)` and accepts both plain state dicts and {"state_dict": ...}
training checkpoints such as HPSv2's.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from draft_lightning import registry
from draft_lightning.errors import ConfigError, ModelUnavailableError
from draft_lightning.hub import hub_file
from draft_lightning.rewards.preprocess import ImageTransform
from draft_lightning.rewards.weights import HF_PREFIX, load_weights_only, resolve_file

# open_clip's Hub weight file names, safetensors preferred (what open_clip itself tries).
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class OpenClip:
    """A loaded OpenCLIP model with its tokenizer and differentiable preprocessing."""

    model: nn.Module
    tokenizer: Any
    transform: ImageTransform


def load_open_clip(
    model_name: str,
    pretrained: str,
    what: str,
    preprocess: dict | None = None,
    keys: tuple[str, str] = ("model", "pretrained"),
) -> OpenClip:
    """Build `model_name` with the weights `pretrained` names.

    Args:
        model_name: An open_clip architecture (e.g. "ViT-H-14") or "tiny:clip".
        pretrained: An open_clip pretrained tag of that architecture (e.g. "openai"), a local
            file, "hf://<org>/<repo>/<file>", or a tiny stand-in ("tiny:clip", "tiny:hpsv2").
        what: The reward, named in messages (e.g. "HPSv2Reward").
        preprocess: Overrides of open_clip's preprocess config (e.g. {"resize_mode": "longest"}).
        keys: The reward's setting names for `model_name` and `pretrained`, for messages.
    """
    import open_clip

    model_key, weights_key = f"{what}.{keys[0]}", f"{what}.{keys[1]}"
    arch = _architecture(model_name, model_key)
    file, tag_cfg = _weights_file(arch, pretrained, weights_key)
    keep = ("mean", "std", "interpolation", "resize_mode")
    overrides = {k: tag_cfg[k] for k in keep if k in tag_cfg}
    overrides.update(preprocess or {})
    if file.suffix != ".safetensors":
        load_weights_only(file, weights_key, mmap=True)
    try:
        model = open_clip.create_model(
            arch,
            pretrained=str(file),
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=overrides,
            weights_only=True,
        )
    except (RuntimeError, KeyError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"{weights_key}={pretrained!r} ({file}) does not load into {model_key}="
            f"{model_name!r}: {first[:300]}"
        ) from None
    transform = ImageTransform.from_open_clip(model.visual.preprocess_cfg)
    return OpenClip(model=model, tokenizer=open_clip.get_tokenizer(arch), transform=transform)


def _architecture(model_name: str, what: str) -> str:
    import open_clip

    if ":" in model_name:  # a registered architecture config (e.g. a tiny stand-in)
        config = registry.resolve("open_clip", model_name, what)
        if config.stem not in open_clip.list_models():
            open_clip.add_model_config(config)
        return config.stem
    name = model_name.replace("/", "-")
    if name not in open_clip.list_models():
        raise ConfigError(
            f"{what}={model_name!r} is not an OpenCLIP model name (see open_clip.list_models())"
        )
    return name


def _weights_file(arch: str, pretrained: str, what: str) -> tuple[Path, dict]:
    """(local file, the pretrained tag's config or {}) for `pretrained`."""
    import open_clip

    looks_like_file = "/" in pretrained or "." in pretrained or Path(pretrained).is_file()
    named = registry.is_named("weights", pretrained) or ":" in pretrained
    if named or pretrained.startswith(HF_PREFIX) or looks_like_file:
        return resolve_file(pretrained, what), {}
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(
            f"{what}={pretrained!r} is neither a file nor a pretrained tag of {arch} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    hub = cfg.get("hf_hub", "")
    if not hub:
        raise ModelUnavailableError(
            f"{what}={pretrained!r}: this tag of {arch} has no Hugging Face Hub file; download "
            f"{cfg.get('url') or 'its weights'} and set {what} to that file"
        )
    repo_id, filename = posixpath.split(hub)  # "org/repo/" or "org/repo/file", as open_clip
    return hub_file(repo_id, filename or _HUB_WEIGHT_FILES, what), cfg
