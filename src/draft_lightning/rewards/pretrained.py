"""What every reward around a pretrained network shares: a storage dtype, freezing, float32 out.

Such a reward is an nn.Module inside the DraftModule: it moves with the module's `.to()`,
never trains (`Reward.freeze()`, and `Reward.train()` stays in eval mode), and is dropped
from checkpoints by `DraftModule.on_save_checkpoint` because none of its parameters
requires grad; a resumed run reloads it from its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from draft_lightning.errors import ConfigError
from draft_lightning.rewards.base import Reward

DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PretrainedReward(Reward):
    """Base of the model-based rewards. Subclasses load their networks, then call `finish()`."""

    def __init__(self, name: str, dtype: str) -> None:
        """
        Args:
            name: Key of this reward in logged score parts.
            dtype: Storage and compute dtype of the frozen weights: float32, bfloat16 or
                float16.
        """
        super().__init__(name)
        if dtype not in DTYPES:
            raise ConfigError(
                f"{type(self).__name__}.dtype={dtype!r} must be one of {', '.join(DTYPES)}"
            )
        self.dtype_name = dtype

    def finish(self) -> None:
        """Cast every weight to the configured dtype and freeze."""
        self.to(DTYPES[self.dtype_name])
        self.freeze()

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Differentiable preprocessing (`self.transform`), then `score_pixels`."""
        return self.score_pixels(self.transform(images), prompts)

    def score_pixels(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """One score per already preprocessed model input; subclasses implement it."""
        raise NotImplementedError

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image embeddings of preprocessed inputs; subclasses implement
        it (the same embedding their score uses)."""
        raise NotImplementedError

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The reward model's own image embedding, for val/diversity."""
        return self.embed_pixels(self.transform(images))

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the weights have now (Lightning's "*-true" precisions may recast them)."""
        return next(self.parameters()).dtype

    @property
    def what(self) -> str:
        """Prefix of setting names in error messages."""
        return type(self).__name__


def check_batch(pixels: torch.Tensor, prompts: Sequence[str]) -> None:
    if len(prompts) != pixels.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {pixels.shape[0]} images")
