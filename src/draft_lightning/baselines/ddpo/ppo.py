"""PPO's clipped objective for DDPO, and the trajectories it trains on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def ppo_clipped_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate per sample, max(-A r, -A clip(r, 1 - eps, 1 + eps)) with
    r = exp(log_prob - old_log_prob), and its diagnostics (approx_kl, clipfrac) per sample.

    The max makes the objective pessimistic: once r has moved past 1 +- eps in the direction
    the advantage favours, the clipped (constant) branch wins and that sample's gradient is 0.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    diagnostics = {
        "approx_kl": 0.5 * (log_prob - old_log_prob).detach() ** 2,
        "clipfrac": ((ratio.detach() - 1.0).abs() > clip_range).float(),
    }
    return torch.maximum(unclipped, clipped), diagnostics


@dataclass
class Trajectories:
    """A sampled batch: every latent of the chain and every step's log-probability."""

    latents: torch.Tensor  # [B, T + 1, C, H, W]: x before step i at [:, i], the final at [:, T]
    log_probs: torch.Tensor  # [B, T], float32
    rewards: torch.Tensor  # [B]
    parts: dict[str, torch.Tensor]  # per-reward scores, for logging
