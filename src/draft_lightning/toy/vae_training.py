"""Training the toy VAE with Lightning: reconstruction loss plus a small KL term.

The KL term keeps the latent close to a unit Gaussian in shape (smooth, no huge values),
which is what the diffusion model then has to learn; training decodes a posterior sample,
so the decoder also tolerates the small errors a diffusion model leaves in its latents.
After training, `latent_scaling_factor` measures the latents' spread the way SD 1.x's
0.18215 was measured, so the UNet sees latents of unit variance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule


class VAETraining(LightningModule):
    """Mean squared error on [-1, 1] images + kl_weight * mean KL per latent element."""

    def __init__(
        self, vae, lr: float = 1e-3, kl_weight: float = 1e-6, max_steps: int = 1000, seed: int = 0
    ) -> None:
        super().__init__()
        self.vae = vae
        self.lr = lr
        self.kl_weight = kl_weight
        self.max_steps = max_steps
        self.generator = torch.Generator().manual_seed(seed)  # posterior samples

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["images"] * 2.0 - 1.0
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=self.generator)
        reconstruction = self.vae.decode(z).sample
        mse = F.mse_loss(reconstruction, x)
        kl = posterior.kl().mean() / z[0].numel()
        loss = mse + self.kl_weight * kl
        self.log_dict({"loss": loss, "mse": mse, "kl": kl})
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.vae.parameters(), lr=self.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] through the encoder's mean and the decoder, back in [0, 1]."""
    z = vae.encode(images * 2.0 - 1.0).latent_dist.mode()
    return (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def latent_scaling_factor(vae, images: torch.Tensor) -> float:
    """1 / std of posterior samples over `images`: scaled latents then have unit variance."""
    z = vae.encode(images * 2.0 - 1.0).latent_dist.sample(torch.Generator().manual_seed(0))
    return float(1.0 / z.std())
