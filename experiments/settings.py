"""What every experiment shares: the toy model, its reward, sampling, LoRA and budgets.

One place, so every method is compared on identical terms; only the estimator (or DDPO's
module) differs between runs. `smoke()` shrinks everything so a test can run the whole path
on the tiny random model in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ExperimentSettings:
    """Shared settings; step budgets are optimiser steps per run."""

    pretrained_model: str | None = None  # None: the toy model `make toy` saved
    classifier: str | None = None  # None: the toy classifier `make toy` saved
    reward_attribute: str = "shape"
    reward_value: str = "circle"
    reward_temperature: float = 10.0  # the classifier is near-certain: soften its softmax
    use_toy_reward: bool = True  # False: Brightness (the smoke test's tiny random model)
    resolution: int = 32
    num_steps: int = 20  # DDIM steps
    guidance_scale: float = 3.0
    batch_size: int = 4
    lr: float = 3e-3
    lora_rank: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    gradient_steps: int = 60  # per run of each gradient method
    val_every: int = 10
    num_val_prompts: int = 8
    num_val_seeds: int = 2
    ddpo_batches: int = 32  # DDPO sampled batches per run (2 optimiser steps each)
    ddpo_batch_size: int = 32
    # The gradient methods' rate: the DDPO paper's 3e-4 (scaled for its far larger runs) did
    # not move the toy model's reward in 512 queries, and one shared rate is the fair default.
    ddpo_lr: float = 3e-3
    # DDPO once more on one seed for longer (--ddpo-long-batches; 0: not run): whether and when
    # it gains at all. Its 216 captions recur rarely, so per-prompt statistics (16 rewards of
    # a caption) take over from the batch's only after about 3,500 queries. 256 batches (8192
    # queries) take about 40 min here, on top of the rest's 105: not part of `make experiments`.
    ddpo_long_batches: int = 0
    ddpo_long_seed: int = 0
    ddpo_long_val_every: int = 16  # batches (512 queries) between its evaluations
    kl_coeffs: tuple[float, ...] = (0.01, 0.1, 1.0)  # DRaFT+ weights (diversity experiment)
    lora_scales: tuple[float, ...] = (0.25, 0.5, 0.75)  # the trained DRaFT-LV adapter at these
    # Diversity is measured on the empty prompt (the toy model's caption-dropout branch): a
    # toy caption fixes every attribute, so one caption's seeds have nothing to lose.
    diversity_seeds: int = 16
    grad_norm_ks: tuple[int, ...] = (1, 2, 5, 10, 20)
    grad_norm_batches: int = 4  # fixed batches per seed for gradient norm vs K
    methods: tuple[str, ...] = field(default=())  # empty: all


def smoke() -> ExperimentSettings:
    """The whole pipeline on the tiny random model, in seconds (for tests)."""
    return replace(
        ExperimentSettings(),
        pretrained_model="tiny:sd",
        use_toy_reward=False,
        num_steps=4,
        batch_size=2,
        lr=1e-2,
        seeds=(0,),
        gradient_steps=2,
        val_every=2,
        num_val_prompts=2,
        num_val_seeds=1,
        ddpo_batches=1,
        ddpo_batch_size=2,
        ddpo_long_batches=2,
        ddpo_long_val_every=1,
        kl_coeffs=(0.1,),
        lora_scales=(0.5,),
        diversity_seeds=3,
        grad_norm_ks=(1, 4),
        grad_norm_batches=1,
    )
