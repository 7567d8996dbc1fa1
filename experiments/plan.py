"""Which runs each experiment needs (experiments/preregistration.md), as RunSpecs.

Three parts a person can run separately (`make experiments-efficiency`, `-chain`, `-ddpo`),
each resumable; `make experiments` runs all three. DDPO's claims need the sweep's choice, so
the DDPO part's later runs are planned once the sweep is done (`ddpo_runs(settings, choice)`).
"""

from __future__ import annotations

from experiments.methods import FULL, K5, K10, LV, ONE
from experiments.settings import ExperimentSettings, RunSpec

PARTS = ("efficiency", "chain", "ddpo")


def efficiency_runs(s: ExperimentSettings) -> list[RunSpec]:
    """Claims 1 and 6: DRaFT-1, DRaFT-LV (its empty-prompt diversity at every evaluation,
    its adapter at other strengths) and DRaFT+, at T = num_steps."""
    common = {"num_steps": s.num_steps, "budget": s.gradient_steps, "val_every": s.val_every}
    runs = []
    for seed in s.seeds:
        runs.append(RunSpec(ONE, seed, **common))
        runs.append(RunSpec(LV, seed, **common, track_diversity=True, lora_scales=s.lora_scales))
        runs.append(RunSpec(LV, seed, **common, kl_coeff=s.kl_coeff))
        runs += [RunSpec(name, seed, **common) for name in s.extra_methods]
    return runs


def chain_runs(s: ExperimentSettings) -> list[RunSpec]:
    """Claim 2: K = 1, 5, 10 and full DRaFT at both chain lengths (DRaFT-1 at T = num_steps
    is the efficiency part's run: same spec, same cache entry)."""
    return [
        RunSpec(name, seed, num_steps=t, budget=s.gradient_steps, val_every=s.val_every)
        for t in (s.num_steps, s.long_num_steps)
        for name in (ONE, K5, K10, FULL)
        for seed in s.seeds
    ]


def sweep_runs(s: ExperimentSettings) -> list[RunSpec]:
    """DDPO's learning rate x clip range sweep on the main task, one seed outside the
    confirmatory ones."""
    return [
        RunSpec(
            "DDPO",
            s.ddpo_sweep_seed,
            num_steps=s.num_steps,
            budget=s.ddpo_sweep_batches,
            val_every=max(1, s.ddpo_sweep_batches // 4),
            ddpo_lr=lr,
            ddpo_clip=clip,
        )
        for lr, clip in s.ddpo_sweep
    ]


def ddpo_runs(s: ExperimentSettings, choice: tuple[float, float]) -> list[RunSpec]:
    """Claims 4 and 5 with the sweep's (lr, clip): the red positive control and the main
    task's long runs."""
    lr, clip = choice
    control = [
        RunSpec(
            "DDPO",
            seed,
            num_steps=s.num_steps,
            task="red",
            budget=s.ddpo_control_batches,
            val_every=s.ddpo_control_val_every,
            ddpo_lr=lr,
            ddpo_clip=clip,
        )
        for seed in s.seeds
    ]
    main = [
        RunSpec(
            "DDPO",
            seed,
            num_steps=s.num_steps,
            budget=s.ddpo_batches,
            val_every=s.ddpo_val_every,
            ddpo_lr=lr,
            ddpo_clip=clip,
        )
        for seed in s.seeds
    ]
    return control + main


def gradient_norm_lengths(s: ExperimentSettings) -> tuple[int, ...]:
    """Claim 3's chain lengths (measured with the chain part)."""
    return (s.num_steps, s.long_num_steps)
