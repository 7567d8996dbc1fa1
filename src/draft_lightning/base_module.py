"""What every reward fine-tuning method shares, as one LightningModule base: the loaded
pipeline with its LoRA adapter, the frozen reward, evaluation, generation with scaled or mixed
adapters, the optimiser over the adapter, and checkpoints that hold only what trains.

DraftModule (module.py) adds the DRaFT family of estimators; the DDPO baseline
(baselines/ddpo/) adds PPO. Neither refuses the other's arguments.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from draft_lightning.errors import ConfigError
from draft_lightning.evaluation.evaluator import Evaluator
from draft_lightning.evaluation.generation import generate
from draft_lightning.models.families.sdxl import SDXLConditioning
from draft_lightning.models.lora import LoraSettings
from draft_lightning.models.pipeline import PipelineOptions, load_pipeline
from draft_lightning.models.sharding import (
    ShardingSettings,
    full_tensor,
    is_sharded,
    shard_module,
    unsharded_parameters,
)
from draft_lightning.randomness import StepRandomness, gather_rng_states, restore_rng_states
from draft_lightning.rewards import Reward
from draft_lightning.samplers.settings import SamplingSettings
from draft_lightning.training.sharding import data_parallel_mesh

# The frozen text encoder, VAE, denoiser and reward stay in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")

# Checkpoints written before the package was reorganised keep the denoiser under `unet.`.
LEGACY_PREFIXES = {"unet.": "pipeline.denoiser."}


def paper_adamw(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """AdamW with the settings reported for DRaFT's small runs."""
    return torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.999), weight_decay=0.1)


class RewardFineTuningModule(LightningModule):
    """A LoRA adapter on a text-to-image model, fine-tuned to maximise a frozen reward.

    Args:
        reward: the frozen reward to maximise (a `Reward`; `WeightedSum` mixes several).
        pretrained_model: hub id (e.g. CompVis/stable-diffusion-v1-4,
            stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0), a local
            diffusers folder, or a registered name ("tiny:sd", "tiny:sd-v", "tiny:sdxl",
            "toy:sd") for CPU runs and tests. The model family is read from the folder itself.
        sampling: sampling steps, guidance, eta and resolution.
        lora: the LoRA adapter on the denoiser.
        optimizer: builds the optimiser over the LoRA weights; default AdamW(lr=4e-4,
            betas=(0.9, 0.999), weight_decay=0.1) as in the paper.
        lr_scheduler: optional learning-rate schedule, stepped every optimiser step.
        gradient_checkpointing: recompute each differentiated denoiser call in the backward
            pass instead of storing its activations.
        checkpoint_decode: the same for the VAE decode.
        checkpoint_blocks: also checkpoint block by block inside each denoiser call and the VAE
            decoder (diffusers' gradient checkpointing), so a backward recompute holds one
            block's activations instead of a whole call's: about half the peak memory, for one
            more forward per differentiated step (docs/benchmarks.md). The decode then uses
            only the block checkpoints. None (default) means on under the sharded strategy
            and off otherwise.
        merge_lora_without_grad: run the sampling steps taken without gradient (DRaFT-K's
            prefix, validation and predict) with the LoRA update merged into the base weights
            (restored exactly afterwards): two fewer matmuls per adapted layer per call, 2-9%
            faster steps on the tiny model, for one extra copy of the adapted weights while
            merged (docs/benchmarks.md). None (default) means on for float32 frozen weights
            and off otherwise: in bf16/fp16 the merged update would be rounded to that
            precision, losing small LoRA updates in the prefix.
        compile_unet: run the denoiser calls made without gradient (the steps before the
            gradient window, validation, predict) through torch.compile, and with gradient
            checkpointing also the discarded forward of each differentiated call (its
            recompute in backward stays eager; samplers/recompute.py; not while LoRA dropout
            is active). The first calls compile, a few graphs per process and batch shape
            (the no-grad steps with the LoRA merged, the differentiated calls' forwards; 6-55 s
            for the tiny model on a quiet 2-core CPU, more under load; the updated LoRA is an
            input of the compiled graphs, so training steps never recompile). Same results
            within float tolerance (tests/samplers/test_compiled_calls.py). On in the shipped
            GPU configs, off in the CPU overlays; not used under the sharded strategy.
        share_first_attention: in a guided call (unconditional and conditional rows in one
            batch, the same latents), compute the UNet's first self-attention once for both
            halves: the text reaches a SD 1.x/2.x UNet only through cross-attention, so the
            two halves are the same numbers up to there (models/guided_halves.py). Exact;
            about 13% of a UNet call on the tiny model. Other families ignore it.
        channels_last: keep the denoiser's weights in channels_last memory format (faster
            convolutions on some hardware; measured in docs/benchmarks.md).
        offload_text_encoders: keep the frozen text encoders on the CPU between batches and
            move them to the accelerator only to encode each batch's prompts (FLUX.1's and
            SD3's T5 holds ~9 GB in bf16); costs a host-device copy of them per step.
        frozen_dtype: storage dtype of the frozen text encoder, VAE and denoiser weights (the
            LoRA weights stay float32).
        upcast_vae: keep the VAE in float32 whatever frozen_dtype is, so decoding (and the
            reward gradient through it) runs in float32. None (default) follows diffusers: on
            when frozen_dtype is float16 and the VAE's config says force_upcast (SDXL's VAE
            overflows in float16).
        pretrained_vae: a replacement VAE (folder or hub id), e.g.
            madebyollin/sdxl-vae-fp16-fix, which decodes in float16 without overflowing.
        sdxl_conditioning: SDXL's size/crop micro-conditioning (SDXL models only).
        sharding: what is sharded besides the denoiser under the sharded strategy
            (`--trainer.strategy sharded`; docs/sharding.md); ignored under DDP.
        prompt_embedding_cache: a folder keeping the prompts' text embeddings on disk
            (safetensors, keyed by model and prompt). At the start of a run the embeddings of
            every prompt of the data module's sources that the folder lacks are computed (the
            text encoders load for that, then are freed); a run whose prompts are all there
            never builds the text encoders. None: encode with the text encoders every step.
        seed: seeds the per-step noise generators (with the global step and the rank).
        lora_scale: strength of the trained adapter when generating for predict, validate and
            test (any real number: 0 is the base model, above 1 extrapolates).
        adapters: exported adapter folders to generate with instead of the trained one
            (predict/validate/test), mixed linearly with `adapter_weights`.
        adapter_weights: one weight per folder in `adapters` (default: all `lora_scale`).
        category_field: a prompt metadata field (data.metadata_fields) whose values group the
            validation and test rewards: logs `val/reward_by_<field>/<value>` per value.
        heldout_rewards: rewards the run never trains on (each a `Reward` with its own init
            args), loaded once, frozen, and scored only on the validation and test samples
            under no_grad: `val/heldout/<name>` beside `val/reward`. A training reward rising
            while these fall is reward hacking; the hacking guard watches them.
    """

    def __init__(
        self,
        reward: Reward,
        pretrained_model: str = "CompVis/stable-diffusion-v1-4",
        sampling: SamplingSettings = SamplingSettings(),  # noqa: B008 - frozen dataclass
        lora: LoraSettings = LoraSettings(),  # noqa: B008 - frozen dataclass
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = True,
        checkpoint_decode: bool = True,
        checkpoint_blocks: bool | None = None,
        merge_lora_without_grad: bool | None = None,
        compile_unet: bool = False,
        share_first_attention: bool = True,
        channels_last: bool = False,
        offload_text_encoders: bool = False,
        frozen_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        upcast_vae: bool | None = None,
        pretrained_vae: str | None = None,
        sdxl_conditioning: SDXLConditioning = SDXLConditioning(),  # noqa: B008 - frozen
        sharding: ShardingSettings = ShardingSettings(),  # noqa: B008 - frozen dataclass
        prompt_embedding_cache: str | None = None,
        seed: int = 0,
        lora_scale: float = 1.0,
        adapters: list[str] | None = None,
        adapter_weights: list[float] | None = None,
        category_field: str | None = None,
        heldout_rewards: list[Reward] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(reward, Reward):
            raise ConfigError(f"reward={type(reward).__name__} is not a draft_lightning Reward")
        heldout = check_heldout_rewards(heldout_rewards)
        if adapter_weights is not None and len(adapter_weights) != len(adapters or []):
            raise ConfigError(
                f"adapter_weights has {len(adapter_weights)} entries for "
                f"{len(adapters or [])} adapters"
            )
        self.check_arguments(sampling)  # a method's own checks, before any weights load
        self.sampling = sampling
        self.lora = lora
        self.pretrained_model = pretrained_model
        options = PipelineOptions(
            frozen_dtype=frozen_dtype,
            upcast_vae=upcast_vae,
            pretrained_vae=pretrained_vae,
            gradient_checkpointing=gradient_checkpointing,
            checkpoint_decode=checkpoint_decode,
            checkpoint_blocks=checkpoint_blocks,
            merge_lora_without_grad=merge_lora_without_grad,
            compile_denoiser=compile_unet,
            share_first_attention=share_first_attention,
            channels_last=channels_last,
            offload_text_encoders=offload_text_encoders,
            prompt_embedding_cache=prompt_embedding_cache,
            family_options={"sdxl_conditioning": sdxl_conditioning},
        )
        self.pipeline = load_pipeline(pretrained_model, sampling, lora, options)
        self.sampler = self.pipeline.sampler
        self.reward = reward.freeze()
        self.sharding = sharding
        # A ModuleList so they follow the module to its device; frozen, never in a loss, and
        # left out of checkpoints (on_save_checkpoint keeps trainable weights only).
        self.heldout_rewards = torch.nn.ModuleList([r.freeze() for r in heldout])
        self.evaluator = Evaluator(reward.part_names, category_field, [r.name for r in heldout])
        self.eval_history: list[tuple[int, dict[str, float]]] = []
        self.last_evaluation: dict | None = None  # all ranks' samples, for image callbacks
        self.optimizer_factory: Callable = optimizer or self.default_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.seed = seed
        self.lora_scale = lora_scale
        self.mix = list(adapters or [])
        self.mix_weights = list(adapter_weights or [lora_scale] * len(self.mix))
        for index, folder in enumerate(self.mix):
            self.pipeline.load_lora(folder, adapter_name=f"mix_{index}")
        self.use_training_adapter()  # training always runs the trained adapter alone
        # Checkpoints hold only the trainable LoRA weights (see on_save_checkpoint).
        self.strict_loading = False
        self.reward_queries = 0  # images scored for training so far, over all ranks
        self.base_reward: float | None = None  # val/reward of the base model (step 0)

    def check_arguments(self, sampling: SamplingSettings) -> None:
        """A method's checks of its own arguments, run before any weights load."""

    # --- placement: the prompt embedding cache, sharding -------------------------------------

    def setup(self, stage: str) -> None:
        """With `prompt_embedding_cache`: embed the data module's prompts the cache lacks (each
        node's first rank writes; the others wait), before any weights move to the device."""
        if self._trainer is None or not self.pipeline.caches_prompts:
            return
        prompts = getattr(self.trainer.datamodule, "all_prompts", None)
        if prompts is None:  # not a PromptDataModule: a missing prompt fails in one line
            return
        if self.trainer.local_rank == 0:
            encoded = self.pipeline.precompute_prompts(prompts(), self.trainer.strategy.root_device)
            if encoded:
                rank_zero_info(
                    f"prompt_embedding_cache: embedded {encoded} prompts into "
                    f"{self.pipeline.prompt_encoder.cache.folder} (text encoders freed)"
                )
        self.trainer.strategy.barrier("prompt_embedding_cache")

    def configure_model(self) -> None:
        """Under the sharded strategy, shard the denoiser block by block (and the VAE and the
        reward where `sharding` says so) across the data-parallel ranks; otherwise nothing.
        Lightning calls this before the optimiser is built, so it sees the sharded adapter."""
        mesh = data_parallel_mesh(self._trainer)
        if mesh is not None:
            self.shard(mesh)

    def shard(self, mesh) -> None:
        """Shard across `mesh` (a 1-D device mesh of the data-parallel ranks); see
        models/sharding.py. Every trainable weight must end up sharded."""
        if self.pipeline.sampler.compiled is not None:
            rank_zero_info("compile_unet: not used under the sharded strategy (eager calls)")
        self.pipeline.shard(mesh, self.sharding)
        if self.sharding.reward == "shard" and not is_sharded(self.reward):
            shard_module(self.reward, mesh, forward_methods=("score", "image_features"))
        left = unsharded_parameters(self)
        if left:  # FSDP2 would not reduce their gradients: ranks would drift apart
            raise ConfigError(
                f"{len(left)} trainable weights are outside the sharded denoiser (e.g. "
                f"{left[0]}): the sharded strategy trains the denoiser's adapter only"
            )

    default_optimizer = staticmethod(paper_adamw)

    # --- evaluation: generate for fixed prompts and seeds, score, log ----------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        images = generate(self.pipeline, batch["prompts"], batch["seeds"])
        _, parts = self.reward.score(images, batch["prompts"])
        return {
            "prompts": batch["prompts"],
            "seeds": batch["seeds"],
            "images": images.cpu(),
            "rewards": {name: scores.float().cpu() for name, scores in parts.items()},
        }

    def generate(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Images in [0, 1] for prompts and per-image seeds, with no gradient anywhere."""
        return generate(self.pipeline, prompts, seeds)

    def evaluate(self, batch: dict) -> None:
        images = generate(self.pipeline, batch["prompts"], batch["seeds"])
        reward, parts = self.reward.score(images, batch["prompts"])
        features = self.reward.image_features(images)
        with torch.no_grad():  # held-out rewards judge; they never enter a gradient
            heldout = {r.name: r(images, batch["prompts"]) for r in self.heldout_rewards}
        self.evaluator.update(batch, images, reward, parts, features, heldout)

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    def log_evaluation(self, stage: str) -> None:
        """Log the synced means; a full sanity-check pass is the base model's score at step 0."""
        world_size = self.trainer.world_size if self._trainer else 1
        values, samples = self.evaluator.compute(stage, world_size)
        self.last_evaluation = {"stage": stage, "step": self.global_step} | samples
        if self.trainer.sanity_checking and self.trainer.num_sanity_val_steps != float("inf"):
            return  # a partial pass over the validation set is no evaluation
        fitting = self.trainer.state.fn == "fit"
        if fitting and self.global_step == 0:
            self.base_reward = float(values[f"{stage}/reward"])
        if fitting and self.base_reward is not None:
            values[f"{stage}/reward_gain"] = values[f"{stage}/reward"] - self.base_reward
        if self.trainer.sanity_checking:
            # Lightning discards metrics logged during the sanity check; when that check ran
            # the whole validation set (num_sanity_val_steps=-1) it is the base model's
            # validation, which a reward curve needs as its first point.
            for logger in self.loggers:
                logger.log_metrics({k: float(v) for k, v in values.items()}, self.global_step)
        else:
            # Already synced by torchmetrics; sync_dist on equal values only quiets a warning.
            total = values.pop(f"{stage}/reward")
            self.log(f"{stage}/reward", total, prog_bar=True, sync_dist=True)
            self.log_dict(values, sync_dist=True)
            values[f"{stage}/reward"] = total
            if fitting:
                # x-axis = optimiser steps taken (0 = the base model), as for the images.
                self.log("step", float(self.global_step), sync_dist=True)
        self.eval_history.append((self.global_step, {k: float(v) for k, v in values.items()}))

    # --- which adapters generate: trained (scaled) or a mix of exported ones ---------------

    def use_generation_adapters(self) -> None:
        """The paper's LoRA scaling and mixing: strength `lora_scale` for the trained adapter,
        or a weighted sum of exported adapters' updates."""
        if self.mix:
            names = [f"mix_{i}" for i in range(len(self.mix))]
            self.pipeline.use_adapters(names, self.mix_weights)
        else:
            self.pipeline.use_adapters(["default"], [self.lora_scale])

    def use_training_adapter(self) -> None:
        self.pipeline.use_adapters(["default"], [1.0])

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

    # --- shared pieces of a training step -----------------------------------------------------

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
        # The spread of the batch's rewards (DDPO's reward_std): collapsing towards 0 while
        # the mean rises is one sign of reward hacking.
        every_rank = self.all_gather(reward.detach()).flatten() if self._trainer else reward
        spread = every_rank.float().std() if every_rank.numel() > 1 else every_rank.new_zeros(())
        self.log("train/reward_std", spread, batch_size=batch_size)
        for name, scores in parts.items():
            self.log(f"train/reward/{name}", scores.mean(), sync_dist=True, batch_size=batch_size)

    # --- optimisation and checkpoints --------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.pipeline.trainable_parameters()

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
            norm = full_tensor(torch.nn.utils.get_total_norm(grads))  # of every shard
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights (frozen model and reward weights reload from their
        source) and add every rank's RNG states, which Lightning does not save."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }
        checkpoint["rng_states"] = gather_rng_states(self.trainer if self._trainer else None)
        checkpoint["reward_queries"] = self.reward_queries
        checkpoint["base_reward"] = self.base_reward
        # The evaluations so far, so a resumed run's summary starts at the base model's.
        checkpoint["eval_history"] = [[step, values] for step, values in self.eval_history]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = {_current_name(k): v for k, v in checkpoint["state_dict"].items()}
        checkpoint["state_dict"] = state
        self.check_trained_weights({name: tuple(value.shape) for name, value in state.items()})
        self.reward_queries = int(checkpoint.get("reward_queries", 0))
        self.base_reward = checkpoint.get("base_reward")
        self.eval_history = [(step, values) for step, values in checkpoint.get("eval_history", [])]
        states = checkpoint.get("rng_states")
        rank = self.global_rank
        if states is not None and rank < len(states):
            restore_rng_states(states[rank])

    def check_trained_weights(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Refuse a checkpoint (given as weight name -> shape) that lacks a trained weight,
        holds it in another shape, or holds trained weights this model does not have.
        Loading is not strict (frozen weights are not in the file), so without this a
        resume would silently start from a fresh adapter, or fail in the optimiser's state."""
        trained = {name for name, p in self.named_parameters() if p.requires_grad}
        extra = sorted(set(shapes) - trained)
        if extra:  # e.g. trained with more target_modules: the optimiser state would not fit
            raise ConfigError(
                f"ckpt_path: the checkpoint does not fit this model's adapter ({len(extra)} "
                f"trained weights in the file are not in this model's adapter, e.g. "
                f"{extra[0]}): resume with the model and lora settings it was trained with "
                f"(lora.target_modules={self.lora.target_modules})"
            )
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            found = shapes.get(name)
            if found is None or tuple(found) != tuple(parameter.shape):
                what = "missing" if found is None else f"of shape {tuple(found)}"
                raise ConfigError(
                    f"ckpt_path: the checkpoint does not fit this model's adapter ({name} is "
                    f"{what} in the file, {tuple(parameter.shape)} here): resume with the "
                    f"model and lora settings it was trained with (lora.rank={self.lora.rank})"
                )


def check_heldout_rewards(rewards: list[Reward] | None) -> list[Reward]:
    """The held-out rewards, refused in one line (before any weights load) unless each is
    a Reward and their names, which become `val/heldout/<name>`, are distinct."""
    rewards = list(rewards or [])
    for index, reward in enumerate(rewards):
        if not isinstance(reward, Reward):
            raise ConfigError(
                f"heldout_rewards[{index}]={type(reward).__name__} is not a draft_lightning "
                "Reward (give a class_path of a Reward subclass and its init_args)"
            )
    names = [r.name for r in rewards]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"heldout_rewards: the name {repeated[0]!r} is given twice; set each reward's "
            "init_args.name so every val/heldout/<name> is distinct"
        )
    return rewards


def _current_name(key: str) -> str:
    for old, new in LEGACY_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key
