"""Rewards that mean something in the toy world: the classifier's belief in an attribute.

`ToyAttributeReward(attribute="shape", value="circle")` scores each image by the toy
classifier's probability that its shape is a circle, differentiably in the pixels. Like the
paper's learned rewards it is a frozen network judging images, so fine-tuning on it can
reach high scores by fooling it as well as by drawing circles: compare the classifier's
verdict with what the images show.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from draft_lightning.errors import ConfigError, ModelUnavailableError
from draft_lightning.rewards.base import Reward
from draft_lightning.toy import world
from draft_lightning.toy.classifier import CONFIG_FILE, WEIGHTS_FILE, load_classifier


def check_attribute(attribute: str, value: str) -> None:
    """One-line ConfigError naming the allowed attributes or values."""
    if attribute not in world.ATTRIBUTES:
        raise ConfigError(
            f"ToyAttributeReward.attribute={attribute!r} is not a toy attribute "
            f"(choose from {', '.join(world.ATTRIBUTES)})"
        )
    allowed = world.ATTRIBUTES[attribute]
    if value not in allowed:
        raise ConfigError(
            f"ToyAttributeReward.value={value!r} is not a {attribute} of the toy world "
            f"(choose from {', '.join(allowed)})"
        )


def classifier_folder(classifier: str | Path | None) -> Path:
    """The classifier folder to load: the given one, or the newest of the one `make toy`
    caches and the one shipped with the package."""
    if classifier is None:
        from draft_lightning.toy.paths import toy_classifier_path

        return toy_classifier_path()
    folder = Path(classifier).expanduser()
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise ModelUnavailableError(
            f"ToyAttributeReward.classifier: no toy classifier at {folder} (missing "
            f"{', '.join(missing)}): run `make toy` to train it"
        )
    return folder


class ToyAttributeReward(Reward):
    """Probability, under the frozen toy classifier, that an image's `attribute` is `value`."""

    def __init__(
        self,
        attribute: str = "shape",
        value: str = "circle",
        classifier: str | None = None,
        name: str | None = None,
        temperature: float = 1.0,
    ) -> None:
        """
        Args:
            attribute: One of shape, colour, size, position, background.
            value: A value of that attribute (e.g. circle, red, large, left, white).
            classifier: Folder of a trained toy classifier (model.safetensors, config.json).
                None uses the newest of the one `make toy` writes to
                $DRAFT_LIGHTNING_CACHE/toy-classifier and the one shipped with the package.
            name: Key of this reward in logged score parts; default toy_<attribute>_<value>.
            temperature: divides the classifier's logits before the softmax. The classifier
                is near-certain on toy images, so at 1 the probability is almost 0 or 1 and
                its gradient vanishes; a higher temperature gives a smooth reward to ascend.
        """
        check_attribute(attribute, value)
        if not temperature > 0:
            raise ConfigError(f"ToyAttributeReward.temperature={temperature} must be > 0")
        self.temperature = temperature
        super().__init__(name or f"toy_{attribute}_{value}")
        self.attribute = attribute
        self.value = value
        self.classifier = load_classifier(classifier_folder(classifier))
        self.index = self.classifier.attributes[attribute].index(value)
        self.freeze()

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's distribution over this attribute's values, [B, n_values]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        weight_dtype = next(self.classifier.parameters()).dtype
        logits = self.classifier(images.to(weight_dtype))[self.attribute]
        return (logits.float() / self.temperature).softmax(dim=1)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.probabilities(images)[:, self.index]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's penultimate layer, [B, hidden], for `val/diversity`: pixel
        distance rewards the noise and artefacts of reward hacking as "diverse", while these
        features measure what the images depict, as CLIP embeddings do for the real rewards."""
        weight_dtype = next(self.classifier.parameters()).dtype
        return self.classifier.embed(images.to(weight_dtype)).float()

    def extra_repr(self) -> str:
        return f"attribute={self.attribute!r}, value={self.value!r}"
