"""SRPO's semantic relative reward (Shen et al., arXiv 2509.06942, 2025): score each image
against the prompt with a positive control phrase and with a negative one, and reward the
difference, so what both prompts share (the reward model's own biases, the usual target of
reward hacking) cancels and only the direction from the negative to the positive phrase is
rewarded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from draft_lightning.errors import ConfigError
from draft_lightning.rewards.base import Reward


class RelativeReward(Reward):
    """reward(image, positive-controlled prompt) - reward(image, negative-controlled prompt).

    Only rewards that read the prompt (HPSv2, PickScore, CLIP score) can tell the two apart;
    a pixel reward scores 0 everywhere. SRPO's released code prefixes the caption with the
    control word and a full stop (positive words such as "Real", "Detailed",
    "Natural-lighting"; negative ones such as "Painting", "Anime", "Concept art").

    Args:
        reward: the prompt-reading reward to make relative.
        positive: the control phrase for what to move towards.
        negative: the control phrase for what to move away from.
        template: how a control phrase and a prompt combine ("{control}" and "{prompt}").
        name: key of this reward in logged score parts (default "relative_<reward name>").
    """

    def __init__(
        self,
        reward: Reward,
        positive: str,
        negative: str,
        template: str = "{control}. {prompt}",
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"relative_{reward.name}")
        if not isinstance(reward, Reward):
            raise ConfigError(f"RelativeReward.reward={type(reward).__name__} is not a Reward")
        if positive == negative:
            raise ConfigError(
                f"RelativeReward: positive and negative are both {positive!r}; the reward "
                "would be 0 for every image"
            )
        if "{control}" not in template or "{prompt}" not in template:
            raise ConfigError(
                f"RelativeReward.template={template!r} must contain {{control}} and {{prompt}}"
            )
        self.reward = reward
        self.positive = positive
        self.negative = negative
        self.template = template

    def controlled(self, control: str, prompts: Sequence[str]) -> list[str]:
        return [self.template.format(control=control, prompt=prompt) for prompt in prompts]

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        # One batch of both prompt sets: one image-model pass over 2B images.
        both = self.controlled(self.positive, prompts) + self.controlled(self.negative, prompts)
        positive, negative = self.reward(torch.cat([images, images]), both).chunk(2)
        return positive - negative

    def image_features(self, images: torch.Tensor) -> torch.Tensor | None:
        return self.reward.image_features(images)

    def freeze(self) -> RelativeReward:
        self.reward.freeze()
        super().freeze()
        return self

    def extra_repr(self) -> str:
        return f"positive={self.positive!r}, negative={self.negative!r}"
