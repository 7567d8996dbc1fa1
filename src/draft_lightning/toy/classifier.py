"""A small CNN that reads a toy image's attributes back: the toy world's "reward model".

It plays the part of the paper's learned reward models (aesthetic predictor, HPSv2): frozen,
differentiable in the image, and imperfect off the data it was trained on, which is what
lets reward hacking happen. Saved as safetensors plus a JSON config, loaded without pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from draft_lightning.toy import world

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ToyClassifier(nn.Module):
    """Images in [0, 1], [B, 3, 32, 32] -> one logit vector per attribute.

    Strided convolutions down to 4x4 and a fully connected layer over the flattened map:
    no global pooling, since position is one of the attributes.
    """

    def __init__(
        self, attributes: dict[str, list[str]] | None = None, width: int = 32, hidden: int = 128
    ) -> None:
        super().__init__()
        self.attributes = {k: list(v) for k, v in (attributes or world.ATTRIBUTES).items()}
        self.width = width
        self.hidden = hidden
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),  # 16x16
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),  # 8x8
            nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),  # 4x4
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * w * 16, hidden),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden, len(values)) for name, values in self.attributes.items()}
        )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The shared features every attribute head reads, [B, hidden]."""
        if images.shape[-2:] != (world.IMAGE_SIZE, world.IMAGE_SIZE):
            images = nn.functional.interpolate(
                images, size=(world.IMAGE_SIZE, world.IMAGE_SIZE), mode="bilinear", antialias=True
            )
        return self.features(images * 2.0 - 1.0)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.embed(images)
        return {name: head(features) for name, head in self.heads.items()}

    def config(self) -> dict:
        return {
            "world_version": world.WORLD_VERSION,
            "attributes": self.attributes,
            "width": self.width,
            "hidden": self.hidden,
        }


def accuracy(model: ToyClassifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Fraction of images whose predicted value matches `labels` [B, A], per attribute."""
    with torch.no_grad():
        logits = model(images)
    return {
        name: (logits[name].argmax(dim=1) == labels[:, i]).float().mean().item()
        for i, name in enumerate(model.attributes)
    }


def save_classifier(model: ToyClassifier, folder: str | Path, extra: dict | None = None) -> Path:
    """Write model.safetensors and config.json (plus `extra`, e.g. accuracies) into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    config = {**model.config(), **(extra or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_classifier(folder: str | Path) -> ToyClassifier:
    """Rebuild the classifier from its config and load its safetensors weights (no pickle)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("world_version") != world.WORLD_VERSION:
        raise ValueError(
            f"{folder} was trained on toy world version {config.get('world_version')}, this "
            f"code renders version {world.WORLD_VERSION}: run `make toy` again"
        )
    model = ToyClassifier(config["attributes"], config["width"], config["hidden"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval()
