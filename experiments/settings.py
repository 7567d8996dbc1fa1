"""What the experiments share, and what identifies one run (experiments/preregistration.md).

`ExperimentSettings` holds the settings every run shares (model, reward, sampling, LoRA,
evaluation) and the plan's sizes (seeds, step budgets, sweeps); `RunSpec` is one run: its
method, chain length, task, seed and budget. A run's cache key is its spec plus the shared
settings, so changing a budget of one experiment does not invalidate the others.
`smoke()` shrinks everything so a test runs the whole path on the tiny random model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

SHARED = (  # the settings every run reads: part of every run's cache key
    "pretrained_model",
    "classifier",
    "reward_temperature",
    "use_toy_reward",
    "resolution",
    "guidance_scale",
    "batch_size",
    "lr",
    "lora_rank",
    "num_val_prompts",
    "num_val_seeds",
    "diversity_seeds",
)


@dataclass(frozen=True)
class ExperimentSettings:
    """Shared settings and the plan's sizes; step budgets are optimiser steps per run."""

    pretrained_model: str | None = None  # None: toy:sd (the cache's `make toy` or the shipped)
    classifier: str | None = None  # None: the toy classifier next to it
    reward_temperature: float = 10.0  # the classifier is near-certain: soften its softmax
    use_toy_reward: bool = True  # False: Brightness (the smoke test's tiny random model)
    resolution: int = 32
    guidance_scale: float = 3.0
    batch_size: int = 4
    lr: float = 3e-3
    lora_rank: int = 8
    num_val_prompts: int = 8
    num_val_seeds: int = 2
    diversity_seeds: int = 16
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    num_steps: int = 20  # the default chain length T
    long_num_steps: int = 50  # the second chain length of claims 2 and 3
    gradient_steps: int = 60
    val_every: int = 5
    kl_coeff: float = 0.01  # DRaFT+ (claim 6b)
    lora_scales: tuple[float, ...] = (0.25, 0.5, 0.75)  # the DRaFT-LV adapter at these
    grad_norm_batches: int = 4  # fixed batches per seed for the gradient norm against K
    ddpo_batch_size: int = 32
    ddpo_sweep: tuple[tuple[float, float], ...] = (
        (3e-4, 1e-4),
        (3e-4, 1e-3),
        (3e-3, 1e-4),
        (3e-3, 1e-3),
    )  # (lr, clip range)
    ddpo_sweep_seed: int = 100
    ddpo_sweep_batches: int = 32
    ddpo_control_batches: int = 32
    ddpo_control_val_every: int = 4  # batches
    ddpo_control_prompts: int = 8
    ddpo_batches: int = 128  # the main comparison (claim 5)
    ddpo_val_every: int = 8  # batches
    extra_methods: tuple[str, ...] = field(default=())  # context runs outside the claims

    def grad_norm_ks(self, num_steps: int) -> tuple[int, ...]:
        """K values of claim 3: 1 to T at T = 20 and at T = 50 (the registration's lists)."""
        table = {20: (1, 2, 5, 10, 20), 50: (1, 5, 10, 25, 50)}
        return table.get(num_steps, tuple(sorted({1, max(1, num_steps // 2), num_steps})))

    def shared(self) -> dict:
        values = asdict(self)
        return {name: values[name] for name in SHARED}


@dataclass(frozen=True)
class RunSpec:
    """One run. `method` names an estimator of experiments/methods.py or "DDPO"; `task` is
    "circle" (the main task) or "red" (DDPO's positive control)."""

    method: str
    seed: int
    num_steps: int = 20
    task: str = "circle"
    budget: int = 60  # optimiser steps (gradient methods) or sampled batches (DDPO)
    val_every: int = 5  # optimiser steps, or batches for DDPO
    kl_coeff: float = 0.0
    ddpo_lr: float = 0.0
    ddpo_clip: float = 0.0
    track_diversity: bool = False  # the empty prompt's diversity at every evaluation
    lora_scales: tuple[float, ...] = ()

    @property
    def ddpo(self) -> bool:
        return self.method == "DDPO"

    @property
    def label(self) -> str:
        """The run's method as the report names it (without the seed)."""
        name = self.method if self.kl_coeff == 0 else f"DRaFT+ (kl {self.kl_coeff:g})"
        if self.ddpo:
            name = f"DDPO (lr {self.ddpo_lr:g}, clip {self.ddpo_clip:g})"
            name += ", red control" if self.task == "red" else ""
        return f"{name}, T={self.num_steps}"


def smoke() -> ExperimentSettings:
    """The whole plan on the tiny random model in seconds (for tests): two seeds (intervals
    need two), chain lengths 4 and 6, a handful of steps."""
    return replace(
        ExperimentSettings(),
        pretrained_model="tiny:sd",
        use_toy_reward=False,
        batch_size=2,
        lr=1e-2,
        num_val_prompts=2,
        num_val_seeds=1,
        diversity_seeds=3,
        seeds=(0, 1),
        num_steps=4,
        long_num_steps=6,
        gradient_steps=2,
        val_every=2,
        lora_scales=(0.5,),
        grad_norm_batches=1,
        ddpo_batch_size=2,
        ddpo_sweep=((1e-2, 1e-4), (1e-2, 1e-3)),
        ddpo_sweep_batches=1,
        ddpo_control_batches=1,
        ddpo_control_val_every=1,
        ddpo_control_prompts=2,
        ddpo_batches=2,
        ddpo_val_every=1,
    )
