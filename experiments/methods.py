"""The compared methods: one DraftModule estimator each, and DDPO's module.

Everything but the estimator comes from ExperimentSettings, so a difference between two
curves is a difference between algorithms. The gradient methods share one learning rate
(no per-method tuning); DDPO takes its own (settings.ddpo_lr, weight decay, PPO updates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from experiments.settings import ExperimentSettings


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[[ExperimentSettings], dict]  # DraftModule/DDPOModule keyword arguments
    ddpo: bool = False


def _estimator(make: Callable[[int], object]) -> Callable[[ExperimentSettings], dict]:
    return lambda s: {"estimator": make(s.num_steps)}


def _ddpo(s: ExperimentSettings) -> dict:
    from draft_lightning.samplers.settings import SamplingSettings

    return {
        # DDPO needs a stochastic sampler: eta 1, as in its paper.
        "sampling": SamplingSettings(s.num_steps, s.guidance_scale, 1.0, s.resolution),
        "optimizer": lambda params: torch.optim.AdamW(params, lr=s.ddpo_lr, weight_decay=1e-4),
        "updates_per_batch": 2,
    }


def all_methods() -> list[Method]:
    from draft_lightning.estimators import Draft, DraftK, DraftLV, RandomTruncation, ReFL

    return [
        Method("DRaFT-1", _estimator(lambda n: DraftK(1))),
        Method("DRaFT-LV (n=2)", _estimator(lambda n: DraftLV(n=2))),
        Method("DRaFT-K (K=5)", _estimator(lambda n: DraftK(min(5, n)))),
        Method("DRaFT-K (K=10)", _estimator(lambda n: DraftK(min(10, n)))),
        Method("full DRaFT", _estimator(lambda n: Draft())),
        Method("AlignProp (K~U[1..T])", _estimator(lambda n: RandomTruncation(low=1))),
        Method("ReFL", _estimator(lambda n: ReFL(window=max(1, n // 4)))),
        Method("DDPO", _ddpo, ddpo=True),
    ]


def draftp_name(kl_coeff: float) -> str:
    """DRaFT-LV with the DRaFT+ term at this weight: one run name per swept coefficient."""
    return f"DRaFT-LV + DRaFT+ (kl {kl_coeff:g})"


def select(names: tuple[str, ...]) -> list[Method]:
    methods = all_methods()
    if not names:
        return methods
    known = {m.name: m for m in methods}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown method {unknown[0]!r} (choose from {', '.join(known)})")
    return [known[n] for n in names]
