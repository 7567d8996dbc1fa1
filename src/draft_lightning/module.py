"""DraftModule: reward fine-tuning of a Stable Diffusion UNet's LoRA adapter.

training_step follows the paper's Algorithm 1: draw prompts and x_T, sample with the
estimator's gradient window, decode, score with the (frozen, differentiable) reward, and
ascend the reward by descending loss = -mean reward.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchmetrics import MeanMetric

from draft_lightning.diversity import PromptDiversity, prompt_ids
from draft_lightning.errors import ConfigError
from draft_lightning.estimators import DraftLV, Estimator
from draft_lightning.families import family_of
from draft_lightning.models import (
    LoraSettings,
    attach_lora,
    check_lora_targets,
    load_lora,
    load_parts,
    lora_parameters,
    read_configs,
    resolve_pretrained,
    resolve_vae,
    vae_scale_factor,
)
from draft_lightning.prompt_encoders import SDXLConditioning
from draft_lightning.randomness import StepRandomness
from draft_lightning.rewards import Reward
from draft_lightning.rng import gather_rng_states, restore_rng_states
from draft_lightning.sampling import DDIMSampler, SamplingSettings

# The frozen text encoder, VAE, UNet and reward stay in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def paper_adamw(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """AdamW with the settings reported for DRaFT's small runs."""
    return torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.999), weight_decay=0.1)


class DraftModule(LightningModule):
    """Fine-tune a LoRA adapter on a Stable Diffusion UNet by backpropagating a reward through
    the sampling chain (DRaFT, DRaFT-K, DRaFT-LV, AlignProp, ReFL: see `estimator`).

    Args:
        reward: the frozen differentiable reward to maximise (a `Reward`; `WeightedSum` mixes
            several).
        pretrained_model: hub id (e.g. CompVis/stable-diffusion-v1-4,
            stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0), a local
            diffusers folder, or a built-in tiny model ("tiny:sd", "tiny:sd-v", "tiny:sdxl")
            for CPU runs and tests. SD 1.x/2.x or SDXL is read from the folder itself.
        estimator: where the gradient flows: Draft, DraftK, DraftLV, RandomTruncation, ReFL.
        sampling: DDIM steps, guidance, eta and resolution.
        lora: the LoRA adapter on the UNet.
        optimizer: builds the optimiser over the LoRA weights; default AdamW(lr=4e-4,
            betas=(0.9, 0.999), weight_decay=0.1) as in the paper.
        lr_scheduler: optional learning-rate schedule, stepped every optimiser step.
        gradient_checkpointing: recompute each differentiated UNet call in the backward pass
            instead of storing its activations.
        checkpoint_decode: the same for the VAE decode.
        checkpoint_blocks: also checkpoint block by block inside each UNet call and the VAE
            decoder (diffusers' gradient checkpointing), so a backward recompute holds one
            block's activations instead of a whole call's: about half the peak memory, for one
            more UNet forward per differentiated step (docs/benchmarks.md). The decode then
            uses only the block checkpoints.
        merge_lora_without_grad: run the sampling steps taken without gradient (DRaFT-K's
            prefix, validation and predict) with the LoRA update merged into the base weights
            (restored exactly afterwards): two fewer matmuls per adapted layer per UNet call,
            2-9% faster steps on the tiny model, for one extra copy of the adapted weights
            while merged (docs/benchmarks.md). None (default) means on for float32 frozen
            weights and off otherwise: in bf16/fp16 the merged update would be rounded to
            that precision, losing small LoRA updates in the prefix.
        compile_unet: run the UNet calls made without gradient through torch.compile (the
            first one compiles: tens of seconds on a CPU; pays off only over long runs).
        channels_last: keep the UNet's weights in channels_last memory format (faster
            convolutions on some hardware; measured in docs/benchmarks.md).
        frozen_dtype: storage dtype of the frozen text encoder, VAE and UNet weights
            (the LoRA weights stay float32).
        upcast_vae: keep the VAE in float32 whatever frozen_dtype is, so decoding (and the
            reward gradient through it) runs in float32. None (default) follows diffusers:
            on when frozen_dtype is float16 and the VAE's config says force_upcast (SDXL's
            VAE overflows in float16).
        pretrained_vae: a replacement VAE (folder or hub id), e.g.
            madebyollin/sdxl-vae-fp16-fix, which decodes in float16 without overflowing.
        sdxl_conditioning: SDXL's size/crop micro-conditioning (SDXL models only).
        seed: seeds the per-step noise generators (with the global step and the rank).
        kl_coeff: DRaFT+ regulariser weight: adds kl_coeff * mean ||eps_lora - eps_base||^2
            over the differentiated steps (base = the same UNet with adapters disabled),
            against reward hacking and loss of diversity. 0 turns it off.
        lora_scale: strength of the trained adapter when generating for predict, validate
            and test (any real number: 0 is the base model, above 1 extrapolates).
        adapters: exported adapter folders to generate with instead of the trained one
            (predict/validate/test), mixed linearly with `adapter_weights`.
        adapter_weights: one weight per folder in `adapters` (default: all `lora_scale`).
        category_field: a prompt metadata field (data.metadata_fields) whose values group the
            validation and test rewards: logs `val/reward_by_<field>/<value>` per value.
    """

    def __init__(
        self,
        reward: Reward,
        pretrained_model: str = "CompVis/stable-diffusion-v1-4",
        estimator: Estimator | None = None,
        sampling: SamplingSettings = SamplingSettings(),  # noqa: B008 - frozen dataclass
        lora: LoraSettings = LoraSettings(),  # noqa: B008 - frozen dataclass
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = True,
        checkpoint_decode: bool = True,
        checkpoint_blocks: bool = False,
        merge_lora_without_grad: bool | None = None,
        compile_unet: bool = False,
        channels_last: bool = False,
        frozen_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        upcast_vae: bool | None = None,
        pretrained_vae: str | None = None,
        sdxl_conditioning: SDXLConditioning = SDXLConditioning(),  # noqa: B008 - frozen
        seed: int = 0,
        kl_coeff: float = 0.0,
        lora_scale: float = 1.0,
        adapters: list[str] | None = None,
        adapter_weights: list[float] | None = None,
        category_field: str | None = None,
    ) -> None:
        super().__init__()
        self.estimator = estimator if estimator is not None else DraftLV()
        self.sampling = sampling
        self.lora = lora
        if frozen_dtype not in DTYPES:
            raise ConfigError(f"frozen_dtype={frozen_dtype!r} must be one of {', '.join(DTYPES)}")
        if not isinstance(reward, Reward):
            raise ConfigError(f"reward={type(reward).__name__} is not a draft_lightning Reward")
        self.estimator.check(self.sampling.num_steps)
        if kl_coeff < 0:
            raise ConfigError(f"kl_coeff={kl_coeff} must be >= 0")
        if adapter_weights is not None and len(adapter_weights) != len(adapters or []):
            raise ConfigError(
                f"adapter_weights has {len(adapter_weights)} entries for "
                f"{len(adapters or [])} adapters"
            )

        # Validate against the checkpoint's configs before any weights load.
        folder = resolve_pretrained(pretrained_model)
        family = family_of(folder)
        unet_config, vae_config = read_configs(folder)
        family.check(folder, unet_config, sdxl_conditioning)
        vae_folder = resolve_vae(pretrained_vae) if pretrained_vae is not None else None
        if vae_folder is not None:
            from diffusers import AutoencoderKL

            vae_config = dict(AutoencoderKL.load_config(vae_folder))
        if upcast_vae is None:
            upcast_vae = frozen_dtype == "float16" and bool(vae_config.get("force_upcast"))
        factor = vae_scale_factor(vae_config)
        if self.sampling.resolution % factor:
            raise ConfigError(
                f"sampling.resolution={self.sampling.resolution} is not divisible by the VAE's "
                f"downsampling factor {factor}"
            )
        check_lora_targets(unet_config, self.lora.target_modules)

        parts = load_parts(
            folder,
            DTYPES[frozen_dtype],
            resolution=self.sampling.resolution,
            conditioning=sdxl_conditioning,
            vae_dtype=torch.float32 if upcast_vae else None,
            vae_folder=vae_folder,
        )
        attach_lora(parts.unet, self.lora)
        self.family = parts.family
        self.unet = parts.unet
        self.vae = parts.vae
        self.prompt_encoder = parts.prompt_encoder
        self.sampler = DDIMSampler(
            parts.unet,
            parts.scheduler,
            self.sampling,
            gradient_checkpointing,
            merge_lora=(
                frozen_dtype == "float32"
                if merge_lora_without_grad is None
                else merge_lora_without_grad
            ),
            compile_unet=compile_unet,
        )
        self.latent_shape = (
            unet_config["in_channels"],
            self.sampling.resolution // factor,
            self.sampling.resolution // factor,
        )
        self.reward = reward.freeze()
        # Validation/test rewards: torchmetrics averages over every sample of every rank.
        self.eval_metrics = nn.ModuleDict(
            {"reward": MeanMetric(), **{f"reward/{n}": MeanMetric() for n in reward.part_names}}
        )
        self.diversity = PromptDiversity()
        self.eval_history: list[tuple[int, dict[str, float]]] = []
        self.eval_samples: list[dict] = []  # this evaluation's thumbnails and scores
        self.last_evaluation: dict | None = None  # all ranks' samples, for image callbacks
        self.checkpoint_decode = checkpoint_decode
        self.checkpoint_blocks = checkpoint_blocks
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if checkpoint_blocks:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        self.optimizer_factory: Callable = optimizer or paper_adamw
        self.lr_scheduler_factory = lr_scheduler
        self.seed = seed
        self.kl_coeff = kl_coeff
        self.category_field = category_field
        self.lora_scale = lora_scale
        self.mix = list(adapters or [])
        self.mix_weights = list(adapter_weights or [lora_scale] * len(self.mix))
        for index, folder in enumerate(self.mix):
            load_lora(self.unet, folder, adapter_name=f"mix_{index}")
        self.unet.set_adapters(["default"])  # training always runs the trained adapter alone
        # Checkpoints hold only the trainable LoRA weights (see on_save_checkpoint).
        self.strict_loading = False
        self.reward_queries = 0  # images scored for training so far, over all ranks

    # --- the algorithm -------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        prompts = batch["prompts"]
        rng = self.step_randomness(batch_idx)
        text = self.prompt_encoder.condition(prompts, self.sampling.guidance_scale)
        noise = rng.randn(len(prompts), self.latent_shape).to(self.device)  # x_T ~ N(0, I)
        tracking = self.sampler.tracking_base_deviation() if self.kl_coeff else nullcontext()
        with tracking as deviation:
            latents = self.estimator.sample(self.sampler, noise, text, rng)
        images = self.decode(latents)
        copies = latents.shape[0] // len(prompts)
        reward, parts = self.reward.score(images, list(prompts) * copies)
        self.count_reward_queries(latents.shape[0])  # DRaFT-LV: every re-noised copy counts
        loss = -reward.mean()
        if deviation is not None:  # DRaFT+
            penalty = deviation.mean()
            loss = loss + self.kl_coeff * penalty
            self.log("train/kl", penalty, sync_dist=True, batch_size=len(prompts))
        self.log_rewards(reward, parts, batch_size=len(prompts))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(prompts))
        self.last_loss = loss.detach()  # for NonFiniteGuard, which runs after backward
        self.last_train_scores = {"reward": reward.detach()} | {
            name: scores.detach() for name, scores in parts.items()
        }
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate("test", batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        images = self.generate(batch["prompts"], batch["seeds"])
        _, parts = self.reward.score(images, batch["prompts"])
        return {
            "prompts": batch["prompts"],
            "seeds": batch["seeds"],
            "images": images.cpu(),
            "rewards": {name: scores.float().cpu() for name, scores in parts.items()},
        }

    # --- which adapters generate: trained (scaled) or a mix of exported ones ---------------

    def use_generation_adapters(self) -> None:
        """The paper's LoRA scaling and mixing: strength `lora_scale` for the trained adapter,
        or a weighted sum of exported adapters' updates."""
        if self.mix:
            names = [f"mix_{i}" for i in range(len(self.mix))]
            self.unet.set_adapters(names, weights=self.mix_weights)
        else:
            self.unet.set_adapters(["default"], weights=[self.lora_scale])

    def use_training_adapter(self) -> None:
        self.unet.set_adapters(["default"], weights=[1.0])

    def on_predict_start(self) -> None:
        self.use_generation_adapters()

    def on_test_start(self) -> None:
        self.use_generation_adapters()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":  # `lightning validate` evaluates what predict would
            self.use_generation_adapters()

    def on_predict_end(self) -> None:
        self.use_training_adapter()

    def on_test_end(self) -> None:
        self.use_training_adapter()

    def on_validation_end(self) -> None:
        if self.trainer.state.fn != "fit":
            self.use_training_adapter()

    # --- pieces ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Images in [0, 1] for prompts and per-image seeds, with no gradient anywhere."""
        text = self.prompt_encoder.condition(prompts, self.sampling.guidance_scale)
        noise = torch.stack(
            [
                torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s)))
                for s in seeds
            ]
        ).to(self.device)
        rng = StepRandomness(int(seeds[0]), 0, 0)  # only DDIM's eta noise draws from it
        result = self.sampler.sample(noise, text, self.sampler.num_steps, rng)
        return self.decode(result.latents)

    def evaluate(self, stage: str, batch: dict) -> None:
        images = self.generate(batch["prompts"], batch["seeds"])
        reward, parts = self.reward.score(images, batch["prompts"])
        self.eval_metrics["reward"].update(reward)
        for name, scores in parts.items():
            self.eval_metrics[f"reward/{name}"].update(scores)
        features = self.reward.image_features(images)
        self.diversity.cosine = features is not None
        if features is None:  # pixels, at a fixed small size so any resolution compares
            features = torch.nn.functional.interpolate(images.float(), size=(32, 32), mode="area")
        self.diversity.update(features.flatten(1), prompt_ids(batch["prompts"]).to(self.device))
        self.eval_samples.append(
            {
                "prompts": list(batch["prompts"]),
                "seeds": [int(s) for s in batch["seeds"]],
                "categories": self.categories(batch),
                "thumbnails": thumbnails(images),
                "scores": {"reward": reward.float().cpu()}
                | {name: v.float().cpu() for name, v in parts.items()},
            }
        )

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    def log_evaluation(self, stage: str) -> None:
        """Log the synced means; a full sanity-check pass is the base model's score at step 0."""
        values = {f"{stage}/{k}": m.compute() for k, m in self.eval_metrics.items()}
        values[f"{stage}/diversity"] = self.diversity.compute()
        for metric in [*self.eval_metrics.values(), self.diversity]:
            metric.reset()
        self.last_evaluation = {"stage": stage, "step": self.global_step}
        self.last_evaluation |= gather_samples(self.eval_samples, self.trainer)
        self.eval_samples = []
        values |= self.category_means(stage, self.last_evaluation)
        if self.trainer.sanity_checking:
            # Lightning discards metrics logged during the sanity check; when that check ran
            # the whole validation set (num_sanity_val_steps=-1) it is the base model's
            # validation, which a reward curve needs as its first point.
            if self.trainer.num_sanity_val_steps != float("inf"):
                return
            if self.logger is not None:
                self.logger.log_metrics({k: float(v) for k, v in values.items()}, self.global_step)
        else:
            # Already synced by torchmetrics; sync_dist on equal values only quiets a warning.
            total = values.pop(f"{stage}/reward")
            self.log(f"{stage}/reward", total, prog_bar=True, sync_dist=True)
            self.log_dict(values, sync_dist=True)
            values[f"{stage}/reward"] = total
            if self.trainer.state.fn == "fit":
                # x-axis = optimiser steps taken (0 = the base model), as for the images.
                self.log("step", float(self.global_step), sync_dist=True)
        self.eval_history.append((self.global_step, {k: float(v) for k, v in values.items()}))

    def categories(self, batch: dict) -> list[str] | None:
        """Each sample's value of `category_field`, from the prompts' metadata."""
        if self.category_field is None:
            return None
        metadata = batch.get("metadata")
        if metadata is None:
            raise ConfigError(
                f"category_field={self.category_field!r} needs prompt metadata: add it to "
                "data.metadata_fields"
            )
        return [str(m.get(self.category_field)) for m in metadata]

    def category_means(self, stage: str, evaluation: dict) -> dict[str, torch.Tensor]:
        """Mean reward per category over every rank's (de-duplicated) samples."""
        if self.category_field is None:
            return {}
        groups: dict[str, list[float]] = {}
        for category, scores in zip(evaluation["categories"], evaluation["scores"], strict=True):
            groups.setdefault(category, []).append(scores["reward"])
        prefix = f"{stage}/reward_by_{self.category_field}"
        return {
            f"{prefix}/{category}": torch.tensor(sum(v) / len(v), device=self.device)
            for category, v in sorted(groups.items())
        }

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode to images in [0, 1]; checkpointed when gradient flows through it."""
        if torch.is_grad_enabled() and self.checkpoint_decode and not self.checkpoint_blocks:
            return checkpoint(self._decode, latents, use_reentrant=False)
        return self._decode(latents)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:  # VAEs with per-channel latent statistics
            shape = (1, -1, 1, 1)
            mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
            std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
            scaled = latents * std / config.scaling_factor + mean
        else:
            scaled = latents / config.scaling_factor
        images = self.vae.decode(scaled.to(self.vae.dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def step_randomness(self, batch_idx: int) -> StepRandomness:
        """This step's draws: seeded by (seed, global step, micro-batch), sliced by rank, so
        runs are reproducible and independent of the number of ranks (see randomness.py)."""
        accumulate = self.trainer.accumulate_grad_batches if self._trainer else 1
        world_size = self.trainer.world_size if self._trainer else 1
        micro_batch = batch_idx % accumulate
        return StepRandomness(
            self.seed, self.global_step, micro_batch, self.global_rank, world_size
        )

    def count_reward_queries(self, images: int) -> None:
        """Add this step's scored images (on every rank) to `train/reward_queries`: the
        x-axis on which reward-backprop and RL methods compare (the paper's Figure 1)."""
        world_size = self.trainer.world_size if self._trainer else 1
        self.reward_queries += images * world_size
        if self._trainer is not None:
            self.log("train/reward_queries", float(self.reward_queries))

    def log_rewards(
        self, reward: torch.Tensor, parts: dict[str, torch.Tensor], batch_size: int
    ) -> None:
        """train/reward (weighted total) and train/reward/<name>, averaged over all ranks."""
        self.log(
            "train/reward", reward.mean(), prog_bar=True, sync_dist=True, batch_size=batch_size
        )
        for name, scores in parts.items():
            self.log(f"train/reward/{name}", scores.mean(), sync_dist=True, batch_size=batch_size)

    # --- optimisation ------------------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return lora_parameters(self.unet)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.trainable_parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights (frozen SD and reward weights reload from their source)
        and add every rank's RNG states, which Lightning does not save."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }
        checkpoint["rng_states"] = gather_rng_states(self.trainer if self._trainer else None)
        checkpoint["reward_queries"] = self.reward_queries

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.reward_queries = int(checkpoint.get("reward_queries", 0))
        states = checkpoint.get("rng_states")
        rank = self.global_rank
        if states is not None and rank < len(states):
            restore_rng_states(states[rank])


def thumbnails(images: torch.Tensor, size: int = 256) -> torch.Tensor:
    """uint8 CPU copies of images no larger than `size`, kept for image grids."""
    if max(images.shape[-2:]) > size:
        images = torch.nn.functional.interpolate(
            images.float(), size=(size, size), mode="bilinear", antialias=True
        )
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def gather_samples(samples: list[dict], trainer) -> dict:
    """Every rank's evaluation samples, de-duplicated (DistributedSampler pads with repeats)
    and sorted by (prompt, seed) so grids are identical whatever the world size."""
    parts = [samples]
    if trainer is not None and trainer.world_size > 1:
        parts = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, samples)
    rows: dict[tuple[str, int], tuple[torch.Tensor, dict[str, float], str | None]] = {}
    for batches in parts:
        for batch in batches:
            for i, (prompt, seed) in enumerate(zip(batch["prompts"], batch["seeds"], strict=True)):
                scores = {name: float(v[i]) for name, v in batch["scores"].items()}
                category = batch["categories"][i] if batch["categories"] else None
                rows.setdefault((prompt, seed), (batch["thumbnails"][i], scores, category))
    keys = sorted(rows)
    return {
        "prompts": [k[0] for k in keys],
        "seeds": [k[1] for k in keys],
        "thumbnails": [rows[k][0] for k in keys],
        "scores": [rows[k][1] for k in keys],
        "categories": [rows[k][2] for k in keys],
    }
