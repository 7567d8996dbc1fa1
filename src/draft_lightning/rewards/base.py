"""The reward contract every scorer follows, so rewards stay ignorant of diffusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Reward(nn.Module):
    """A frozen, differentiable scorer of images and prompts; higher is better.

    Images in [0, 1] of shape [B, 3, H, W] and B prompts in, one score per image out
    (shape [B]).

    Subclasses implement `forward`. The base keeps the module frozen: no parameter trains and
    `train()` never leaves eval mode (Lightning calls `model.train()` at fit start, which would
    otherwise switch on dropout inside a reward model).
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__.lower()

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def part_names(self) -> list[str]:
        """Keys of the dict that `score()` returns, in order."""
        return [self.name]

    def score(
        self, images: torch.Tensor, prompts: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total score per image and the per-reward parts that make it up (for logging)."""
        total = self(images, prompts)
        return total, {self.name: total}

    def image_features(self, images: torch.Tensor) -> torch.Tensor | None:
        """Image embeddings for the diversity metric ([B, D]), if this reward has a model that
        makes them (CLIP-based rewards); None means diversity is measured in pixels."""
        return None

    def freeze(self) -> Reward:
        """Eval mode and no parameter requiring grad; returns self."""
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> Reward:
        return super().train(False)
