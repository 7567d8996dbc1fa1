"""A held-out reward that training on Brightness games by construction (tests of the
hacking guard, in process and through `lightning fit`)."""

from __future__ import annotations

from draft_lightning.rewards import Reward
from draft_lightning.rewards.pixel import luma

TARGET = 0.52  # the tiny model's base images have mean luma ~0.48


class Exposure(Reward):
    """Held-out judge: how close each image's mean luma is to `target` (0 is best), so it
    rises with brightness at first and falls once training overshoots the target.

    Args:
        target: the preferred mean luma.
        name: key of the reward in logged scores (val/heldout/<name>).
    """

    def __init__(self, target: float = TARGET, name: str = "exposure") -> None:
        super().__init__(name)
        self.target = target

    def forward(self, images, prompts):
        return -(luma(images.float()).flatten(1).mean(1) - self.target).abs()
