"""The compared methods: a DraftModule estimator each, and DDPO's module options.

Everything but the estimator (and DDPO's own options) comes from the shared settings, so a
difference between two curves is a difference between algorithms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from experiments.settings import ExperimentSettings, RunSpec

DDPO_ETA = 1.0  # DDPO needs a stochastic sampler: eta 1, as in its paper
DDPO_UPDATES_PER_BATCH = 2  # PPO updates on each batch of trajectories
DDPO_STAT_MIN_COUNT = 16  # rewards a caption needs before its own statistics are used

ONE, LV, FULL, DDPO = "DRaFT-1", "DRaFT-LV (n=2)", "full DRaFT", "DDPO"
K5, K10 = "DRaFT-K (K=5)", "DRaFT-K (K=10)"
ALIGNPROP, REFL = "AlignProp (K~U[1..T])", "ReFL"


def estimators() -> dict[str, Callable[[int], object]]:
    """name -> estimator for a chain of T steps."""
    from draft_lightning.estimators import Draft, DraftK, DraftLV, RandomTruncation, ReFL

    return {
        ONE: lambda t: DraftK(1),
        LV: lambda t: DraftLV(n=2),
        K5: lambda t: DraftK(min(5, t)),
        K10: lambda t: DraftK(min(10, t)),
        FULL: lambda t: Draft(),
        ALIGNPROP: lambda t: RandomTruncation(low=1),
        REFL: lambda t: ReFL(window=max(1, t // 4)),
    }


def module_options(settings: ExperimentSettings, spec: RunSpec) -> dict:
    """DraftModule/DDPOModule keyword arguments that depend on the method."""
    from draft_lightning.samplers.settings import SamplingSettings

    if spec.ddpo:
        return {
            "sampling": SamplingSettings(
                spec.num_steps, settings.guidance_scale, DDPO_ETA, settings.resolution
            ),
            "optimizer": lambda params: torch.optim.AdamW(
                params, lr=spec.ddpo_lr, weight_decay=1e-4
            ),
            "clip_range": spec.ddpo_clip,
            "updates_per_batch": DDPO_UPDATES_PER_BATCH,
            "stat_min_count": DDPO_STAT_MIN_COUNT,
        }
    options = {"estimator": estimators()[spec.method](spec.num_steps)}
    if spec.kl_coeff:
        options["kl_coeff"] = spec.kl_coeff
    return options


def check_extra(names: tuple[str, ...]) -> None:
    """--extra-methods: only estimators this file knows."""
    unknown = [name for name in names if name not in estimators()]
    if unknown:
        raise SystemExit(
            f"error: unknown method {unknown[0]!r} (choose from {', '.join(estimators())})"
        )
