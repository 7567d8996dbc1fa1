"""Building a configured model and reward with their real architectures and no weights.

`lightning plan` must work where the weights are not (offline, before renting a GPU), so
inside `weightless()` every place the package loads weights builds the same class from its
configuration on the meta device instead: diffusers and transformers `from_pretrained`, the
OpenCLIP reward towers and the aesthetic head. A hub id resolves to the architecture folder
shipped in planning/architectures/ (config files only); a local folder and the registered tiny
models are read as they are. Everything else (family checks, LoRA, samplers, estimators) runs
the package's own code unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

from draft_lightning import registry
from draft_lightning.errors import ConfigError
from draft_lightning.models.families.base import read_json

ARCHITECTURES = Path(__file__).parent / "architectures"


def known_architectures() -> list[str]:
    """Hub ids whose architecture ships with the package."""
    return sorted(folder.name.replace("--", "/") for folder in ARCHITECTURES.iterdir())


def architecture_folder(name: str, what: str = "pretrained_model") -> Path:
    """The folder whose config files describe `name`: a registered model, a local folder, or
    the shipped copy of a hub repo's configs."""
    if registry.is_named("models", name) or ":" in name:
        with _paused():  # a registered tiny model is built (with weights) on first use
            return registry.resolve("models", name, what)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    shipped = ARCHITECTURES / name.replace("/", "--")
    if shipped.is_dir():
        return shipped
    raise ConfigError(
        f"{what}={name!r}: plan knows no architecture for it offline (shipped: "
        f"{', '.join(known_architectures())}); give a local diffusers folder (config files "
        "are enough, no weights needed)"
    )


def vae_folder(name: str) -> Path:
    """`pretrained_vae` as a folder holding the VAE's config.json."""
    folder = architecture_folder(name, "pretrained_vae")
    return folder / "vae" if (folder / "vae" / "config.json").is_file() else folder


class ShapeTokenizer:
    """Stands in for a tokenizer: only the padded length of the ids matters to memory and
    FLOPs (prompts are always padded to the full length), so the ids are zeros."""

    def __init__(self, model_max_length: int) -> None:
        self.model_max_length = model_max_length

    def __call__(self, texts, max_length: int | None = None, return_tensors=None, **_):
        from transformers import BatchEncoding

        texts = [texts] if isinstance(texts, str) else list(texts)
        length = max_length or self.model_max_length
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        # No attention mask: it would be all ones (every prompt the same length), which models
        # treat as none, but checking that reads a value, which a meta tensor has not.
        return BatchEncoding({"input_ids": ids})


_ORIGINALS: dict[str, object] = {}
_PAUSED = [0]


@contextmanager
def _paused() -> Iterator[None]:
    _PAUSED[0] += 1
    try:
        yield
    finally:
        _PAUSED[0] -= 1


def _unless_paused(name: str, replacement):
    """`replacement` while weightless; the original while paused (building a tiny model)."""

    def call(cls, *args, **kwargs):
        if _PAUSED[0]:
            return _ORIGINALS[name].__get__(None, cls)(*args, **kwargs)
        return replacement(cls, *args, **kwargs)

    return classmethod(call)


def _tokenizer(cls, folder, subfolder: str = "", **_) -> ShapeTokenizer:
    config_file = Path(folder) / subfolder / "tokenizer_config.json"
    length = read_json(config_file).get("model_max_length", 77) if config_file.is_file() else 77
    return ShapeTokenizer(int(min(length, 4096)))


_DEVICE = ["meta"]  # where weightless() builds: "meta", or "cpu" for random weights
OPEN_CLIP_NO_WEIGHTS = "No pretrained weights loaded for model"


class _WithoutWeightsOnPurpose(logging.Filter):
    """open_clip warns (on the root logger) when it builds a tower without weights, which is
    what the plan asks it for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(OPEN_CLIP_NO_WEIGHTS)


def _diffusers_model(cls, folder, subfolder: str | None = None, torch_dtype=None, **_):
    config = cls.load_config(folder, subfolder=subfolder)
    with torch.device(_DEVICE[0]):
        model = cls.from_config(config)
    return model.to(torch_dtype) if torch_dtype is not None else model


def _transformers_model(cls, folder, subfolder: str = "", dtype=None, torch_dtype=None, **_):
    config = cls.config_class.from_pretrained(Path(folder) / subfolder)
    with torch.device(_DEVICE[0]):
        model = cls._from_config(config)
    dtype = dtype or torch_dtype
    return model.to(dtype) if dtype is not None else model.eval()


def _open_clip_weights(arch: str, pretrained: str, what: str) -> tuple[Path, dict]:
    import open_clip

    tag = {} if ("/" in pretrained or ":" in pretrained or "." in pretrained) else None
    return Path("weightless.safetensors"), tag if tag is not None else (
        open_clip.get_pretrained_cfg(arch, pretrained) or {}
    )


def _reward_folder(original):
    """A reward's `resolve_folder` that finds a hub id's shipped configs (PickScore's CLIPModel
    and its processor) before asking the hub."""

    def resolve(source: str, what: str, required, weights=()) -> Path:
        shipped = ARCHITECTURES / source.replace("/", "--")
        if source.count("/") == 1 and not Path(source).expanduser().is_dir() and shipped.is_dir():
            return shipped
        with _paused():  # a registered tiny reward is built (with weights) on first use
            return original(source, what, required, weights)

    return resolve


def _clip_processor(cls, folder, **_):
    """A CLIPProcessor from its image-preprocessing config and a `ShapeTokenizer` (the real
    tokenizer's vocabulary files are not shipped: only the ids' length matters)."""
    from transformers import CLIPImageProcessor

    return SimpleNamespace(
        image_processor=CLIPImageProcessor.from_pretrained(folder),
        tokenizer=_tokenizer(cls, folder),
    )


def _aesthetic_head(source: str, what: str):
    from draft_lightning.rewards.aesthetic import aesthetic_mlp

    with torch.device(_DEVICE[0]):
        return aesthetic_mlp()


@contextmanager
def weightless(device: str = "meta") -> Iterator[None]:
    """Inside: models and rewards load with their architecture and no weights: on the meta
    device, or with `device="cpu"` randomly initialised (to measure a real-size step)."""
    _DEVICE[0] = device
    import diffusers
    import open_clip
    import transformers

    from draft_lightning.models import pipeline
    from draft_lightning.rewards import aesthetic, open_clip_loader, pickscore

    create_model = open_clip.create_model
    _ORIGINALS["diffusers"] = vars(diffusers.ModelMixin)["from_pretrained"]
    _ORIGINALS["transformers"] = vars(transformers.PreTrainedModel)["from_pretrained"]
    _ORIGINALS["tokenizer"] = vars(transformers.PreTrainedTokenizerBase)["from_pretrained"]
    _ORIGINALS["processor"] = vars(transformers.ProcessorMixin)["from_pretrained"]

    def open_clip_model(arch, pretrained=None, **kwargs):
        if _PAUSED[0]:
            return create_model(arch, pretrained=pretrained, **kwargs)
        kwargs.pop("weights_only", None)
        notice = _WithoutWeightsOnPurpose()
        logging.getLogger().addFilter(notice)
        try:
            with torch.device(_DEVICE[0]):
                return create_model(arch, pretrained=None, device=_DEVICE[0], **kwargs)
        finally:
            logging.getLogger().removeFilter(notice)

    module_to = torch.nn.Module.to

    def to(module, *args, **kwargs):
        """Host offloading (`offload_text_encoders`) of a weightless module: it stays on the
        meta device, outside the module that the plan counts."""
        target = args[0] if args else kwargs.get("device")
        meta = any(p.is_meta for p in module.parameters())
        if meta and isinstance(target, str | torch.device) and torch.device(target).type == "cpu":
            return module
        return module_to(module, *args, **kwargs)

    patches = [
        mock.patch.object(torch.nn.Module, "to", to),
        mock.patch.object(pipeline, "resolve_pretrained", architecture_folder),
        mock.patch.object(pipeline, "resolve_vae", vae_folder),
        mock.patch.object(
            diffusers.ModelMixin, "from_pretrained", _unless_paused("diffusers", _diffusers_model)
        ),
        mock.patch.object(
            transformers.PreTrainedModel,
            "from_pretrained",
            _unless_paused("transformers", _transformers_model),
        ),
        mock.patch.object(
            transformers.PreTrainedTokenizerBase,
            "from_pretrained",
            _unless_paused("tokenizer", _tokenizer),
        ),
        mock.patch.object(
            transformers.CLIPProcessor,
            "from_pretrained",
            _unless_paused("processor", _clip_processor),
        ),
        mock.patch.object(pickscore, "resolve_folder", _reward_folder(pickscore.resolve_folder)),
        mock.patch.object(open_clip_loader, "_weights_file", _open_clip_weights),
        mock.patch.object(open_clip, "create_model", open_clip_model),
        mock.patch.object(aesthetic, "load_aesthetic_mlp", _aesthetic_head),
    ]
    with ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        try:
            yield
        finally:
            _DEVICE[0] = "meta"
