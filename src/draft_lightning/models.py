"""Loading Stable Diffusion parts (hub id, local folder or the built-in tiny model) and LoRA.

The text encoder and VAE are frozen; the UNet's own weights are frozen too and only the peft
LoRA adapter attached to it trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from draft_lightning.errors import ConfigError, ModelUnavailableError
from draft_lightning.families import ModelFamily, family_of
from draft_lightning.hub import hf_cache_dir, offline_reason
from draft_lightning.prompt_encoders import SDXLConditioning

TINY_PREFIX = "tiny:"
TINY_MODELS = {"tiny:sd": "epsilon", "tiny:sd-v": "v_prediction", "tiny:sdxl": "sdxl"}
TOY_MODEL = "toy:sd"  # what `make toy` pretrains, in $DRAFT_LIGHTNING_CACHE/toy-sd

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
    """A local diffusers folder for `name`: a tiny model, the toy model, an existing folder,
    or a hub id.

    Hub ids are looked up in the local Hugging Face cache first and downloaded only if
    missing; any failure becomes one line saying what to download and where to put it.
    """
    if name == "tiny:sdxl":
        from draft_lightning.tiny_sdxl import tiny_sdxl_path

        return tiny_sdxl_path()
    if name in TINY_MODELS:
        from draft_lightning.tiny import tiny_sd_path

        return tiny_sd_path(prediction_type=TINY_MODELS[name])
    if name == TOY_MODEL:
        from draft_lightning.toy.paths import toy_sd_path

        return toy_sd_path()
    if name.startswith(TINY_PREFIX):
        raise ConfigError(
            f"pretrained_model={name!r} is not a built-in tiny model (choose from "
            f"{', '.join(TINY_MODELS)})"
        )
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
    return _hub_snapshot(name)


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
    return _hub_snapshot(name, VAE_HUB_PATTERNS, option="model.pretrained_vae")


def _hub_snapshot(
    repo_id: str, patterns: list[str] = HUB_PATTERNS, option: str = "model.pretrained_model"
) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: fall through to a download attempt
        pass
    reason = offline_reason()
    if reason is None:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns))
        except Exception as error:  # noqa: BLE001 - any network or auth failure, reported below
            reason = type(error).__name__
    raise ModelUnavailableError(
        f"model {repo_id!r} is not in the local Hugging Face cache and could not be downloaded "
        f"({reason}): run `hf download {repo_id}` on a machine with access and copy the cache "
        f"to {hf_cache_dir()}, or set {option} to a local diffusers folder"
    )


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter on the UNet (peft).

    Args:
        rank: LoRA rank r (the paper used 8 for small runs, 32 for large ones).
        alpha: LoRA alpha; the update is scaled by alpha / rank. None means alpha = rank.
        target_modules: UNet module names (suffixes) that get an adapter.
        init: peft's init_lora_weights: "gaussian" (A ~ N(0, 1/r), B = 0) or "default"
            (Kaiming A, B = 0); either way the adapter starts as the identity.
        dropout: dropout on the LoRA branch.
    """

    rank: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    init: str = "gaussian"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank={self.rank} must be >= 1")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha} must be > 0")
        if self.init not in ("gaussian", "default"):
            raise ConfigError(f"lora.init={self.init!r} must be 'gaussian' or 'default'")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty: name at least one UNet module")


@dataclass
class StableDiffusionParts:
    """The pieces of a text-to-image pipeline that reward fine-tuning needs."""

    prompt_encoder: nn.Module
    vae: nn.Module
    unet: nn.Module
    scheduler: Any
    folder: Path
    family: ModelFamily

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def read_configs(folder: Path) -> tuple[dict, dict]:
    """UNet and VAE configs only (no weights), to validate a run before loading anything."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return (
        dict(UNet2DConditionModel.load_config(folder, subfolder="unet")),
        dict(AutoencoderKL.load_config(folder, subfolder="vae")),
    )


def check_lora_targets(unet_config: dict, target_modules: tuple[str, ...]) -> None:
    """Refuse target names the UNet does not have, by building its skeleton on the meta device."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        skeleton = UNet2DConditionModel.from_config(unet_config)
    names = [name for name, _ in skeleton.named_modules()]
    for target in target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ConfigError(
                f"lora.target_modules has {target!r}, which this UNet does not have "
                "(SD attention layers are to_q, to_k, to_v, to_out.0)"
            )


def vae_scale_factor(vae_config: dict) -> int:
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def load_parts(
    folder: Path,
    frozen_dtype: torch.dtype = torch.float32,
    resolution: int = 512,
    conditioning: SDXLConditioning = SDXLConditioning(),  # noqa: B008 - frozen dataclass
    vae_dtype: torch.dtype | None = None,
    vae_folder: Path | None = None,
) -> StableDiffusionParts:
    """Load the text encoder(s), VAE, UNet and a DDIM scheduler from a diffusers folder.

    The model family (SD 1.x/2.x or SDXL) comes from the folder itself. Every frozen part
    is put in eval mode with requires_grad off. The scheduler is DDIM built from the
    checkpoint's own scheduler config (SD 1.x ships PNDM, SDXL Euler; the values carry
    over). `vae_dtype` overrides the VAE's storage dtype (float32 decoding for an
    fp16-unsafe VAE); `vae_folder` replaces the VAE (e.g. SDXL's fp16-fixed one).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    family = family_of(folder)
    prompt_encoder = family.load_prompt_encoder(folder, frozen_dtype, resolution, conditioning)
    vae_dtype = vae_dtype or frozen_dtype
    if vae_folder is None:
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype)
    else:
        vae = AutoencoderKL.from_pretrained(vae_folder, torch_dtype=vae_dtype)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=frozen_dtype)
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    for frozen in (vae, unet):
        frozen.requires_grad_(False)
        frozen.eval()
    return StableDiffusionParts(prompt_encoder, vae, unet, scheduler, folder, family)


def attach_lora(unet: nn.Module, settings: LoraSettings, adapter_name: str = "default") -> None:
    """Add a trainable peft LoRA adapter to the frozen UNet; its weights are kept in float32.

    float32 adapter weights keep small updates from vanishing when the frozen weights are
    stored in bf16/fp16.
    """
    from peft import LoraConfig

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha if settings.alpha is not None else settings.rank,
        init_lora_weights=settings.init if settings.init == "gaussian" else True,
        target_modules=list(settings.target_modules),
        lora_dropout=settings.dropout,
    )
    unet.add_adapter(config, adapter_name=adapter_name)
    for parameter in lora_parameters(unet):
        parameter.data = parameter.data.float()


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The adapter weights: the only parameters that train."""
    return [p for name, p in unet.named_parameters() if "lora_" in name]


LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
# Names of the two LoRA matrices in files (diffusers' and peft's) and in peft's modules.
LORA_NAMES = (
    ("lora.down", "lora_A"),
    ("lora.up", "lora_B"),
    ("lora_A", "lora_A"),
    ("lora_B", "lora_B"),
)


def save_lora(
    unet: nn.Module,
    folder: Path,
    adapter_name: str = "default",
    pipeline_class: str = "StableDiffusionPipeline",
) -> Path:
    """Write the adapter in diffusers' format, with its metadata, atomically.

    `pipeline_class` is the diffusers pipeline whose save_lora_weights writes the file (the
    model family's: StableDiffusionXLPipeline for SDXL), so its load_lora_weights reads it.

    The metadata (lora_alpha, rank, targets) must travel with the weights: without it
    diffusers assumes alpha = rank and a run trained with alpha != rank loads silently wrong.
    The folder is written beside its final place and renamed into it, so a reader never
    sees a half-written adapter.
    """
    import shutil
    import tempfile

    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    metadata = unet.peft_config[adapter_name].to_dict()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        getattr(diffusers, pipeline_class).save_lora_weights(
            tmp,
            unet_lora_layers=convert_state_dict_to_diffusers(state),
            unet_lora_adapter_metadata=metadata,
            weight_name=LORA_WEIGHTS_NAME,
        )
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_lora(unet: nn.Module, folder: str | Path, adapter_name: str) -> None:
    """Load an exported adapter (our export or any diffusers-format SD LoRA) under a name."""
    folder = Path(folder).expanduser()
    weights = folder / LORA_WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(f"adapter folder {str(folder)!r} has no {LORA_WEIGHTS_NAME}")
    from safetensors.torch import load_file

    state = load_file(weights)
    prefix = "unet."
    state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    try:
        unet.load_lora_adapter(
            str(folder),
            weight_name=LORA_WEIGHTS_NAME,
            adapter_name=adapter_name,
            prefix="unet",
        )
    except Exception as error:  # noqa: BLE001 - peft/diffusers raise many types on a mismatch
        raise ConfigError(
            f"adapter {str(folder)!r} does not fit this UNet ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})"
        ) from error
    # diffusers loads mismatched files with a warning at most: check that every tensor in the
    # file arrived, whole and unchanged, in a parameter of this adapter.
    params = dict(unet.named_parameters())
    for key, tensor in state.items():
        for file_name, part in LORA_NAMES:
            key = key.replace(f".{file_name}.weight", f".{part}.{adapter_name}.weight")
        param = params.get(key)
        if (
            param is None
            or param.shape != tensor.shape
            or not torch.equal(param.detach().cpu().to(tensor.dtype), tensor)
        ):
            unet.delete_adapters(adapter_name)
            found = "missing" if param is None else f"shape {tuple(param.shape)}"
            raise ConfigError(
                f"adapter {str(folder)!r} does not fit this UNet: {key} is "
                f"{tuple(tensor.shape)} in the file, {found} in the model"
            )
