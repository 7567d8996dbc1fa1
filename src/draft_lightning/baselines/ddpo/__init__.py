"""DDPO, the RL baseline: PPO on the stochastic DDIM chain (Black et al., 2023)."""

from draft_lightning.baselines.ddpo.module import DDPOModule

__all__ = ["DDPOModule"]
