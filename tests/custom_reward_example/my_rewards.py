"""A user's own reward, kept outside draft_lightning: a YAML names it by class_path.

Put this folder on PYTHONPATH (or install it) and write in a config:

    model:
      reward:
        class_path: my_rewards.WarmTones
        init_args:
          strength: 2.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from draft_lightning.rewards import Reward


class WarmTones(Reward):
    """Mean of red minus blue per image: pushes images towards warm colours."""

    def __init__(self, strength: float = 1.0, name: str = "warm_tones") -> None:
        """
        Args:
            strength: Multiplies the score, so it can be balanced against other rewards.
            name: Key of this reward in logged score parts.
        """
        super().__init__(name)
        self.strength = strength

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        red, blue = images[:, 0].float(), images[:, 2].float()
        return self.strength * (red - blue).flatten(1).mean(dim=1)
