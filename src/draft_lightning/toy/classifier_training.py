"""Training the toy classifier with Lightning on freshly rendered batches.

Clean renders are sharper than anything a small diffusion model produces, so training
images are blurred and noised by random amounts: the classifier then judges generated
images by their content rather than by their crispness.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from draft_lightning.toy.classifier import ToyClassifier

MAX_NOISE = 0.06


def degrade(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blend each image with a 3x3 blur of itself and add Gaussian noise, random amounts."""
    b = images.shape[0]
    blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(b, 1, 1, 1, generator=generator)
    sigma = MAX_NOISE * torch.rand(b, 1, 1, 1, generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    return (mix * blur + (1 - mix) * images + sigma * noise).clamp(0, 1)


class ClassifierTraining(LightningModule):
    """Cross-entropy summed over the attribute heads; AdamW with a cosine decay."""

    def __init__(
        self, model: ToyClassifier, lr: float = 2e-3, max_steps: int = 1000, seed: int = 0
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.max_steps = max_steps
        self.generator = torch.Generator().manual_seed(seed)  # degradation amounts and noise

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(degrade(batch["images"], self.generator))
        loss = sum(
            F.cross_entropy(logits[name], batch["labels"][:, i])
            for i, name in enumerate(self.model.attributes)
        )
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
