"""Weighted sum of rewards, so a run can trade off several objectives and still log each."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.rewards.base import Reward


class WeightedSum(Reward):
    """sum_i w_i * r_i(images, prompts), with each unweighted r_i reported by `score()`.

    Sub-rewards live in an nn.ModuleList so `.to()`, dtype casts, `freeze()` and `train()`
    reach them. A nested WeightedSum contributes its own parts (not its total) to the parts
    dict, so every leaf name across the tree must be unique.
    """

    def __init__(
        self, rewards: list[Reward], weights: list[float] | None = None, name: str = "total"
    ) -> None:
        """
        Args:
            rewards: The rewards to combine; leaf names must be unique.
            weights: One finite weight per reward; defaults to 1.0 each.
            name: Key of this reward when it is itself logged.
        """
        super().__init__(name)
        rewards = list(rewards)
        if not rewards:
            raise ConfigError("WeightedSum rewards=[]: needs at least one reward")
        for r in rewards:
            if not isinstance(r, Reward):
                raise TypeError(f"WeightedSum takes Reward instances, got {type(r).__name__}")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        if len(weights) != len(rewards):
            raise ConfigError(
                f"WeightedSum weights={weights}: {len(weights)} weights for {len(rewards)} "
                "rewards; need one weight per reward"
            )
        for w in weights:
            if not math.isfinite(w):
                raise ConfigError(f"WeightedSum weights={weights}: each weight must be finite")
        names = [n for r in rewards for n in r.part_names]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(
                f"WeightedSum rewards: names must be unique, got duplicates {dupes} in {names}"
            )
        self.rewards = nn.ModuleList(rewards)
        self.weights = weights

    @property
    def part_names(self) -> list[str]:
        """Keys of the dict returned by `score()`, in order."""
        return [n for r in self.rewards for n in r.part_names]

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        pairs = zip(self.weights, self.rewards, strict=True)
        scores = [w * r(images, prompts) for w, r in pairs]
        total = scores[0]
        for s in scores[1:]:
            total = total + s
        return total

    def score(
        self, images: torch.Tensor, prompts: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and every leaf's unweighted scores, running each leaf once."""
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for w, r in zip(self.weights, self.rewards, strict=True):
            sub_total, sub_parts = r.score(images, prompts)
            total = w * sub_total if total is None else total + w * sub_total
            for key, value in sub_parts.items():
                if key in parts:
                    raise ValueError(f"duplicate reward part name {key!r} from {r.name!r}")
                parts[key] = value
        assert total is not None  # the constructor rejects an empty list
        return total, parts

    def freeze(self) -> WeightedSum:
        """Freeze every child (through its own `freeze()`), then this module; returns self."""
        for r in self.rewards:
            r.freeze()
        super().freeze()
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor | None:
        """The first part's image embedding that has one (for val/diversity)."""
        for reward in self.rewards:
            features = reward.image_features(images)
            if features is not None:
                return features
        return None

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights={self.weights}"
