"""One training run (a method, a seed) and the gradient-norm-against-K measurement."""

from __future__ import annotations

import logging
import warnings

import torch

from experiments.methods import Method
from experiments.recorder import Recorder
from experiments.settings import ExperimentSettings

warnings.filterwarnings("ignore", message=".*eval mode.*")
warnings.filterwarnings("ignore", message=".*self.log.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def toy_prompts(settings: ExperimentSettings) -> tuple[list[str], list[str]]:
    """Training prompts (every caption of the toy world) and fixed validation prompts."""
    if not settings.use_toy_reward:
        return ["a red circle", "a blue square", "a cat", "a dog"], ["a red circle", "a cat"]
    from draft_lightning.toy import world

    captions = world.all_captions()
    generator = torch.Generator().manual_seed(12345)
    order = torch.randperm(len(captions), generator=generator).tolist()
    return captions, [captions[i] for i in order[: settings.num_val_prompts]]


def reward(settings: ExperimentSettings):
    if not settings.use_toy_reward:
        from draft_lightning.rewards import Brightness

        return Brightness()
    from draft_lightning.toy.rewards import ToyAttributeReward

    return ToyAttributeReward(
        attribute=settings.reward_attribute,
        value=settings.reward_value,
        classifier=settings.classifier,
        temperature=settings.reward_temperature,
    )


def pretrained_model(settings: ExperimentSettings) -> str:
    if settings.pretrained_model is not None:
        return settings.pretrained_model
    from draft_lightning.toy.paths import toy_sd_path

    return str(toy_sd_path())


def build_module(settings: ExperimentSettings, method: Method, seed: int, **overrides):
    from draft_lightning.baselines.ddpo import DDPOModule
    from draft_lightning.models.lora import LoraSettings
    from draft_lightning.module import DraftModule
    from draft_lightning.samplers.settings import SamplingSettings

    kwargs = {
        "reward": reward(settings),
        "pretrained_model": pretrained_model(settings),
        "sampling": SamplingSettings(
            settings.num_steps, settings.guidance_scale, 0.0, settings.resolution
        ),
        "lora": LoraSettings(rank=settings.lora_rank),
        "optimizer": lambda params: torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0),
        "seed": seed,
        **method.build(settings),
        **overrides,
    }
    torch.manual_seed(seed)  # the LoRA's random A
    return (DDPOModule if method.ddpo else DraftModule)(**kwargs)


def train(
    settings: ExperimentSettings,
    method: Method,
    seed: int,
    lora_scales=(),
    unconditional_every_eval: bool = False,
    val_every: int | None = None,
    **overrides,
) -> dict:
    """Fit one run; return its per-step and per-evaluation records, plus evaluations of the
    final adapter at other LoRA strengths (`lora_scales`). `unconditional_every_eval` adds
    the empty prompt's reward and diversity to every evaluation (the early-stopping path);
    `val_every` (training batches) replaces the settings' evaluation interval."""
    from lightning.pytorch import Trainer

    from draft_lightning.data import PromptDataModule

    module = build_module(settings, method, seed, **overrides)
    train_prompts, val_prompts = toy_prompts(settings)
    batch_size = settings.ddpo_batch_size if method.ddpo else settings.batch_size
    data = PromptDataModule(
        train_prompts=train_prompts,
        val_prompts=val_prompts,
        batch_size=batch_size,
        val_batch_size=8,
        num_val_prompts=len(val_prompts),
        num_val_seeds=settings.num_val_seeds,
        seed=seed,
    )
    steps = 2 * settings.ddpo_batches if method.ddpo else settings.gradient_steps
    if val_every is None:
        val_every = max(1, settings.ddpo_batches // 4) if method.ddpo else settings.val_every
    recorder = Recorder(
        (lambda m: {"unconditional": unconditional_samples(m, settings, 1.0)})
        if unconditional_every_eval
        else None
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=-1,
        gradient_clip_val=None if method.ddpo else 1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(module, data)
    if recorder.val[-1]["step"] != trainer.global_step:  # evaluate the final adapter
        trainer.validate(module, data, verbose=False)
    scaled = {}
    for scale in lora_scales:
        module.lora_scale = scale
        trainer.validate(module, data, verbose=False)  # `validate` uses lora_scale
        scaled[str(scale)] = dict(recorder.val.pop())
        module.lora_scale = 1.0
    # Scale 0 turns the adapter off: the base model, on the same seeds.
    unconditional_scales = (0.0, *lora_scales, 1.0) if lora_scales else (1.0,)
    return {
        "train": recorder.train,
        "val": recorder.val,
        "lora_scaled": scaled,
        "unconditional": {
            f"{scale:g}": unconditional_samples(module, settings, scale)
            for scale in unconditional_scales
        },
    }


@torch.no_grad()
def unconditional_samples(module, settings: ExperimentSettings, lora_scale: float) -> dict:
    """Mean reward and diversity of `diversity_seeds` images for the empty prompt at this LoRA
    strength. The toy model learned the empty prompt as its caption-dropout branch, so its
    samples vary in every attribute; fine-tuning that collapses them shows up here."""
    from draft_lightning.evaluation.diversity import mean_pairwise_distance

    seeds = [10_000 + i for i in range(settings.diversity_seeds)]
    prompts = [""] * len(seeds)
    module.lora_scale = lora_scale
    module.use_generation_adapters()
    images = torch.cat(
        [module.generate(prompts[i : i + 8], seeds[i : i + 8]) for i in range(0, len(seeds), 8)]
    )
    features = module.reward.image_features(images)
    cosine = features is not None
    if not cosine:  # pixels, as val/diversity does for rewards without an embedding
        features = torch.nn.functional.interpolate(images.float(), size=(32, 32), mode="area")
    reward = module.reward(images, prompts).float().mean()
    module.lora_scale = 1.0
    module.use_training_adapter()
    return {
        "reward": float(reward),
        "diversity": float(mean_pairwise_distance(features.flatten(1), cosine)),
    }


def gradient_norms(settings: ExperimentSettings, seed: int) -> dict[str, list[float]]:
    """LoRA gradient norm of DRaFT-K's loss at the pretrained model, for each K, on fixed
    batches: how the gradient through K sampling steps grows with K (the paper's Figure 4)."""
    from draft_lightning.estimators import DraftK
    from experiments.methods import all_methods

    module = build_module(settings, all_methods()[0], seed)
    train_prompts, _ = toy_prompts(settings)
    generator = torch.Generator().manual_seed(seed)
    norms: dict[str, list[float]] = {str(k): [] for k in settings.grad_norm_ks}
    for batch_index in range(settings.grad_norm_batches):
        rows = torch.randint(len(train_prompts), (settings.batch_size,), generator=generator)
        prompts = [train_prompts[i] for i in rows.tolist()]
        for k in settings.grad_norm_ks:
            module.estimator = DraftK(min(k, settings.num_steps))
            for p in module.trainable_parameters():
                p.grad = None
            module.seed = 1000 * seed + batch_index  # fresh noise per batch, same for every K
            loss = module.training_step({"prompts": prompts}, 0)
            grads = torch.autograd.grad(loss, module.trainable_parameters(), allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
            norms[str(k)].append(float(norm))
    return norms
