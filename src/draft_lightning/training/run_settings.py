"""The settings that tell one run from another, flat and logger-friendly: what the HParams
table compares and what a model card states."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer

from draft_lightning.training.hacking_guard import HACKING_TAG, HackingGuard


def run_settings(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """Method and estimator (with its K/n), model, reward, sampling, LoRA, optimiser and
    learning rate, batch sizes, seed and world size; None values left out."""
    params: dict[str, Any] = {"method": type(pl_module).__name__}
    estimator = getattr(pl_module, "estimator", None)  # DraftModule's; DDPO has none
    if estimator is not None:
        params["estimator"] = repr(estimator)  # e.g. DraftLV(n=2, ...): one column says all
        params |= {f"estimator.{k}": v for k, v in vars(estimator).items()}
    params["model"] = getattr(pl_module, "pretrained_model", None)
    params["reward"] = reward_description(pl_module.reward)
    params |= {f"sampling.{k}": v for k, v in vars(pl_module.sampling).items()}
    lora = vars(pl_module.lora) | {
        "alpha": pl_module.lora.alpha or pl_module.lora.rank,
        "target_modules": pl_module.lora.target_modules or pl_module.pipeline.family.lora_targets,
    }
    params |= {f"lora.{k}": v for k, v in lora.items()}
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    if optimizer is not None:
        group = optimizer.param_groups[0]
        params["optimizer"] = type(optimizer).__name__
        params["lr"] = group.get("initial_lr", group["lr"])  # before any schedule
        params["weight_decay"] = group.get("weight_decay")
    batch_size = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule else None
    if batch_size is not None:
        params["batch_size"] = batch_size
        params["global_batch_size"] = (
            batch_size * trainer.accumulate_grad_batches * trainer.world_size
        )
    params |= {
        "kl_coeff": getattr(pl_module, "kl_coeff", None),
        "seed": pl_module.seed,
        "max_steps": trainer.max_steps if trainer.max_steps > 0 else None,
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
    }
    # Loggers take numbers, strings and booleans; tuples and the like become strings.
    return {
        k: v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in params.items()
        if v is not None
    }


def reward_description(reward) -> str:
    """e.g. "brightness" or "brightness + 0.5 colorfulness" for a WeightedSum."""
    parts = getattr(reward, "rewards", None)
    weights = getattr(reward, "weights", None)
    if parts is None or weights is None:
        return reward.name
    terms = [
        reward_description(part) if weight == 1 else f"{weight:g} {reward_description(part)}"
        for part, weight in zip(parts, weights, strict=True)
    ]
    return " + ".join(terms)


def final_metric_tags(pl_module: LightningModule) -> list[str]:
    """The validation scalars a run is judged by: the reward, each part when there are
    several, the held-out rewards, diversity, the gain over the base model, and the hacking
    guard's flag when the run has the guard."""
    parts = list(pl_module.reward.part_names)
    tags = ["val/reward", *(f"val/reward/{n}" for n in parts if len(parts) > 1)]
    tags += [f"val/heldout/{r.name}" for r in getattr(pl_module, "heldout_rewards", [])]
    tags += ["val/reward_gain", "val/diversity"]
    trainer = pl_module._trainer
    if trainer is not None and any(isinstance(c, HackingGuard) for c in trainer.callbacks):
        tags.append(HACKING_TAG)
    return tags
