"""A loaded text-to-image pipeline ready for reward fine-tuning: the family's frozen parts,
the denoiser with its LoRA adapter, the sampler over it, and decoding. Built from a model
name in one call, with every setting checked against the checkpoint's configs before any
weights load; DraftModule and the DDPO baseline both compose it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from draft_lightning.errors import ConfigError
from draft_lightning.models import lora
from draft_lightning.models.families import check_options, family_of
from draft_lightning.models.families.base import ModelFamily, frozen
from draft_lightning.models.guided_halves import share_first_attention
from draft_lightning.models.loading import resolve_pretrained, resolve_vae
from draft_lightning.models.prompt_cache import (
    CachedPromptEncoder,
    PromptEmbeddingCache,
    text_files,
)
from draft_lightning.models.sharding import ShardingSettings, is_sharded, shard_module
from draft_lightning.samplers.base import Sampler
from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.samplers.settings import SamplingSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PipelineOptions:
    """How the frozen parts are stored and how gradients pass through them (see DraftModule's
    arguments of the same names)."""

    frozen_dtype: str = "float32"
    upcast_vae: bool | None = None
    pretrained_vae: str | None = None
    gradient_checkpointing: bool = True
    checkpoint_decode: bool = True
    checkpoint_blocks: bool | None = None  # None: on once sharded, else off
    merge_lora_without_grad: bool | None = None
    compile_denoiser: bool = False
    share_first_attention: bool = True
    channels_last: bool = False
    offload_text_encoders: bool = False
    prompt_embedding_cache: str | None = None
    family_options: dict[str, Any] = field(default_factory=dict)


class Pipeline(nn.Module):
    """The parts of one model, loaded (see `load_pipeline`)."""

    def __init__(
        self,
        family: ModelFamily,
        prompt_encoder: nn.Module,
        denoiser: nn.Module,
        vae: nn.Module,
        sampler: Sampler,
        latent_shape: tuple[int, ...],
        settings: SamplingSettings,
        options: PipelineOptions,
    ) -> None:
        super().__init__()
        self.family = family
        self.offload_text_encoders = options.offload_text_encoders
        if self.offload_text_encoders:
            # Not a registered submodule, so moving the pipeline (Lightning's .to(device))
            # leaves the frozen encoders on the CPU; `condition` brings them over per call.
            object.__setattr__(self, "prompt_encoder", prompt_encoder.to("cpu"))
        else:
            self.prompt_encoder = prompt_encoder
        self.denoiser = denoiser
        self.vae = vae
        self.sampler = sampler
        self.latent_shape = latent_shape
        self.settings = settings
        self.options = options
        self.checkpoint_decode = options.checkpoint_decode
        self.checkpoint_blocks = bool(options.checkpoint_blocks)

    def condition(self, prompts: list[str]) -> Conditioning:
        """The prompts' (frozen, no-grad) conditioning at the configured guidance: one pass
        of the text encoders per batch. With `offload_text_encoders` they visit the
        denoiser's device for that pass and go back to the CPU (large T5s take GBs)."""
        if not self.offload_text_encoders:
            return self.prompt_encoder.condition(prompts, self.settings.guidance_scale)
        with visiting(self.prompt_encoder, self.device):
            return self.prompt_encoder.condition(prompts, self.settings.guidance_scale)

    @property
    def caches_prompts(self) -> bool:
        """Whether prompt embeddings come from a cache on disk (prompt_embedding_cache)."""
        return isinstance(self.prompt_encoder, CachedPromptEncoder)

    def precompute_prompts(self, prompts: list[str], device: torch.device | str) -> int:
        """With a prompt embedding cache: encode the prompts it lacks (text encoders built on
        `device`, then freed) and return how many; without one, 0."""
        if not self.caches_prompts:
            return 0
        return self.prompt_encoder.precompute(prompts, device)

    def initial_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """x_T as the sampler sees it, from noise of shape (B, *latent_shape)."""
        return self.family.pack(noise.to(self.device))

    def seeded_noise(self, seeds: list[int]) -> torch.Tensor:
        """One x_T per seed, independent of the batch it is drawn in."""
        noise = torch.stack(
            [
                torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s)))
                for s in seeds
            ]
        )
        return self.initial_noise(noise)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in [0, 1]; checkpointed when gradient flows through it."""
        if torch.is_grad_enabled() and self.checkpoint_decode and not self.checkpoint_blocks:
            return checkpoint(self._decode, latents, use_reentrant=False)
        return self._decode(latents)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.family.decode(self.vae, self.family.unpack(latents))

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def enable_block_checkpointing(self) -> None:
        """diffusers' per-block gradient checkpointing in the denoiser and the VAE decoder."""
        self.denoiser.enable_gradient_checkpointing()
        self.vae.enable_gradient_checkpointing()
        self.checkpoint_blocks = True

    # --- sharding --------------------------------------------------------------------------

    def shard(self, mesh, settings: ShardingSettings) -> None:
        """Shard the denoiser block by block across `mesh` (and the VAE if `settings` say so),
        with per-block gradient checkpointing unless `checkpoint_blocks` was set to False.
        Called again, it does nothing. See models/sharding.py."""
        if is_sharded(self.denoiser):
            return
        if self.options.merge_lora_without_grad:
            raise ConfigError(
                "merge_lora_without_grad=True cannot be used with a sharded model (the LoRA "
                "update cannot be folded into weight shards): leave it null"
            )
        # The shipped GPU configs set compile_unet and docs/sharding.md runs any config
        # sharded: compiling FSDP2-wrapped blocks is untested, so those calls run eagerly.
        self.sampler.compiled = None
        self.sampler.no_grad_context = None  # unmerged LoRA in the no-grad steps
        if self.options.checkpoint_blocks is None:
            self.enable_block_checkpointing()
        shard_module(self.denoiser, mesh, reshard_after_forward=settings.reshard_after_forward)
        if settings.vae == "shard":
            shard_module(self.vae, mesh, forward_methods=("decode",))

    # --- the adapter -----------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return lora.lora_parameters(self.denoiser)

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The trained adapter's weights, whole, on the CPU (peft's names). Sharded, they
        are gathered from every rank: every rank must call this."""
        return lora.lora_state_dict(self.denoiser)

    def save_lora(
        self,
        folder: Path,
        state: dict[str, torch.Tensor] | None = None,
        formats: tuple[str, ...] = ("diffusers",),
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        """Write the adapter (`state` from `lora_state`, or this unsharded model's) in
        `formats`, with `extra_files`, atomically."""
        return lora.save_lora(
            self.denoiser,
            folder,
            self.family.pipeline_class,
            self.family.lora_component,
            formats=formats,
            extra_files=extra_files,
            state=state,
        )

    def adapter_norm(self) -> torch.Tensor:
        """||scale * B A|| over the trained adapter's layers: how far it moves the model."""
        return lora.delta_weight_norm(self.denoiser)

    def load_lora(self, folder: str | Path, adapter_name: str) -> None:
        lora.load_lora(self.denoiser, folder, adapter_name, self.family.lora_component)

    def use_adapters(self, names: list[str], weights: list[float]) -> None:
        lora.use_adapters(self.denoiser, names, weights)


@contextmanager
def visiting(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """`module` on `device` inside the block and back on the CPU after it."""
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")


def load_pipeline(
    pretrained_model: str,
    settings: SamplingSettings,
    lora_settings: lora.LoraSettings,
    options: PipelineOptions,
) -> Pipeline:
    """Resolve, check (configs only), then load a model and attach its LoRA adapter."""
    if options.frozen_dtype not in DTYPES:
        raise ConfigError(
            f"frozen_dtype={options.frozen_dtype!r} must be one of {', '.join(DTYPES)}"
        )
    folder = resolve_pretrained(pretrained_model)
    family = family_of(folder)
    check_options(family, options.family_options)
    family_options = {**family.options, **options.family_options}
    vae_folder = resolve_vae(options.pretrained_vae) if options.pretrained_vae else None
    configs = family.read_configs(folder, vae_folder)
    family.check(folder, configs, family_options)
    upcast_vae = options.upcast_vae
    if upcast_vae is None:
        upcast_vae = options.frozen_dtype == "float16" and bool(configs["vae"].get("force_upcast"))
    family.check_sampling(configs, settings)
    default_targets = family.default_lora_targets(configs)
    targets = lora_settings.target_modules or default_targets
    lora.check_targets(
        family.skeleton(configs),
        targets,
        f"{family.display_name}: {', '.join(default_targets)}",
    )

    dtype = DTYPES[options.frozen_dtype]
    load_encoder = partial(
        family.load_prompt_encoder, folder, dtype, settings.resolution, family_options
    )
    if options.prompt_embedding_cache is None:
        prompt_encoder = load_encoder()
    else:  # the text encoders load only to fill missing entries (Pipeline.precompute_prompts)
        key = {
            "model": str(folder.resolve()),
            "family": family.name,
            "text_files": text_files(folder),
            "dtype": options.frozen_dtype,
            "guidance_scale": settings.guidance_scale,
            "resolution": settings.resolution,
            "options": repr(sorted(family_options.items())),
        }
        cache = PromptEmbeddingCache(options.prompt_embedding_cache, key)
        prompt_encoder = CachedPromptEncoder(cache, settings.guidance_scale, load_encoder)
    vae = frozen(family.load_vae(folder, torch.float32 if upcast_vae else dtype, vae_folder))
    denoiser = frozen(family.load_denoiser(folder, dtype))
    lora.attach_lora(denoiser, lora_settings, targets)
    if options.share_first_attention:
        share_first_attention(denoiser)  # SD 1.x/2.x UNets only; others are left as they are
    merge = options.merge_lora_without_grad
    if merge is None:
        merge = options.frozen_dtype == "float32"
    sampler = family.make_sampler(
        denoiser,
        folder,
        settings,
        gradient_checkpointing=options.gradient_checkpointing,
        no_grad_context=partial(lora.lora_merged, denoiser) if merge else None,
        compile_denoiser=options.compile_denoiser,
    )
    if options.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    pipeline = Pipeline(
        family,
        prompt_encoder,
        denoiser,
        vae,
        sampler,
        family.latent_shape(configs, settings.resolution),
        settings,
        options,
    )
    if options.checkpoint_blocks:
        pipeline.enable_block_checkpointing()
    return pipeline
