"""The toy world's judge: a second, independently trained reader of toy images, to check a
fine-tune with the world's own ground truth rather than with the reward it was trained on.

The reward's classifier (classifier.py) is what fine-tuning pushes against, so its verdict on
the tuned images is exactly what reward hacking corrupts. The judge is trained on the same
rendered ground truth (every caption states what was drawn) but shares nothing else with it:
another seed and data stream, another architecture (coordinate channels, 5x5 first
kernels, group norm and max pooling instead of strided convolutions), so an image that fools
the reward's network is unlikely to fool this one. `ToyJudgeReward` exposes it as a Reward,
for held-out validation scores; its `verdicts` say what fraction of images show the attribute.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from draft_lightning.errors import ConfigError, ModelUnavailableError
from draft_lightning.rewards.base import Reward
from draft_lightning.toy import world
from draft_lightning.toy.classifier import CONFIG_FILE, WEIGHTS_FILE, save_classifier

ARCHITECTURE = "toy-judge-v1"


class ToyJudge(nn.Module):
    """Images in [0, 1], [B, 3, 32, 32] -> one logit vector per attribute, like ToyClassifier,
    through a different network: pixel coordinates as two extra input channels (position is
    an attribute), three conv-norm-pool blocks down to 4x4, a hidden layer, one head each."""

    def __init__(self, attributes: dict[str, list[str]] | None = None, width: int = 24) -> None:
        super().__init__()
        self.attributes = {k: list(v) for k, v in (attributes or world.ATTRIBUTES).items()}
        self.width = width
        w = width

        def block(cin: int, cout: int, kernel: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, kernel, padding=kernel // 2),
                nn.GroupNorm(4, cout),
                nn.GELU(),
                nn.MaxPool2d(2),
            ]

        self.features = nn.Sequential(
            *block(5, w, 5),  # 16x16
            *block(w, 2 * w, 3),  # 8x8
            *block(2 * w, 3 * w, 3),  # 4x4
            nn.Flatten(),
            nn.Linear(3 * w * 16, 4 * w),
            nn.GELU(),
        )
        self.heads = nn.ModuleDict(
            {name: nn.Linear(4 * w, len(values)) for name, values in self.attributes.items()}
        )
        ramp = torch.linspace(-1.0, 1.0, world.IMAGE_SIZE)
        coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="xy"))  # x, y channels
        self.register_buffer("coords", coords[None], persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[-2:] != (world.IMAGE_SIZE, world.IMAGE_SIZE):
            images = nn.functional.interpolate(
                images, size=(world.IMAGE_SIZE, world.IMAGE_SIZE), mode="bilinear", antialias=True
            )
        coords = self.coords.to(images.dtype).expand(images.shape[0], -1, -1, -1)
        features = self.features(torch.cat([images * 2.0 - 1.0, coords], dim=1))
        return {name: head(features) for name, head in self.heads.items()}

    def config(self) -> dict:
        return {
            "architecture": ARCHITECTURE,
            "world_version": world.WORLD_VERSION,
            "attributes": self.attributes,
            "width": self.width,
        }


def save_judge(model: ToyJudge, folder: str | Path, extra: dict | None = None) -> Path:
    """model.safetensors and config.json, as the reward's classifier is saved."""
    return save_classifier(model, folder, extra)


def load_judge(folder: str | Path) -> ToyJudge:
    """Rebuild the judge from its config and load its safetensors weights (no pickle)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise ModelUnavailableError(
            f"no toy judge at {folder} (missing {', '.join(missing)}): run `make toy` to train it"
        )
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("architecture") != ARCHITECTURE:
        raise ConfigError(
            f"{folder} holds no toy judge (config architecture is not {ARCHITECTURE})"
        )
    if config.get("world_version") != world.WORLD_VERSION:
        raise ConfigError(
            f"{folder} was trained on toy world version {config.get('world_version')}, this "
            f"code renders version {world.WORLD_VERSION}: run `make toy` again"
        )
    model = ToyJudge(config["attributes"], config["width"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval()


CAPTION = "caption"  # a ToyJudgeReward value: whatever each image's prompt states


class ToyJudgeReward(Reward):
    """The toy judge's probability that an image's attribute is a value (a held-out score).

    With value "caption", the value each image's prompt states (1 where the prompt leaves the
    attribute unsaid: any value agrees with it). For runs trained on
    ToyAttributeReward: the same question, asked of an independent network."""

    def __init__(
        self,
        attribute: str = "shape",
        value: str = "circle",
        judge: str | None = None,
        name: str | None = None,
    ) -> None:
        """
        Args:
            attribute: One of shape, colour, size, position, background.
            value: A value of that attribute (e.g. circle, red, large, left, white), or
                "caption": the value each image's prompt (a toy world caption) states.
            judge: Folder of a trained toy judge (model.safetensors, config.json). None uses
                the newest of `make toy`'s ($DRAFT_LIGHTNING_CACHE/toy-judge) and the one
                shipped with the package.
            name: Key of this reward in logged score parts; default judge_<attribute>_<value>.
        """
        from draft_lightning.toy.paths import toy_judge_path
        from draft_lightning.toy.rewards import check_attribute

        if value != CAPTION:
            check_attribute(attribute, value)
        elif attribute not in world.ATTRIBUTES:
            check_attribute(attribute, world.ATTRIBUTES["shape"][0])  # names the attributes
        super().__init__(name or f"judge_{attribute}_{value}")
        self.attribute = attribute
        self.value = value
        self.judge = load_judge(toy_judge_path() if judge is None else Path(judge).expanduser())
        self.freeze()

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's distribution over this attribute's values, [B, n_values]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        return self.judge(images.float())[self.attribute].float().softmax(dim=1)

    def targets(self, prompts: Sequence[str]) -> torch.Tensor:
        """Per image, the index of the value it is judged against, [B]; -1 where the value is
        `caption` and the caption leaves the attribute unsaid (any value agrees with it)."""
        values = self.judge.attributes[self.attribute]
        if self.value != CAPTION:
            return torch.full((len(prompts),), values.index(self.value), dtype=torch.long)
        stated = [world.parse_caption(p) for p in prompts]
        if any(s is None for s in stated):
            bad = next(p for p, s in zip(prompts, stated, strict=True) if s is None)
            raise ConfigError(
                f"ToyJudgeReward(value='caption') needs toy world captions as prompts, got {bad!r}"
            )
        return torch.tensor(
            [values.index(s[self.attribute]) if self.attribute in s else -1 for s in stated]
        )

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        target = self.targets(prompts).to(images.device)
        agreement = self.probabilities(images).gather(1, target.clamp(min=0)[:, None])[:, 0]
        return torch.where(target < 0, torch.ones_like(agreement), agreement)

    @torch.no_grad()
    def verdicts(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per image, True where the judge's most likely value is the target, [B] bool."""
        target = self.targets(prompts).to(images.device)
        return (self.probabilities(images).argmax(dim=1) == target) | (target < 0)

    def extra_repr(self) -> str:
        return f"attribute={self.attribute!r}, value={self.value!r}"
