"""Training the toy UNet with Lightning: SD 1.x's epsilon-prediction loss on VAE latents.

The text encoder is frozen, and the world has only 720 captions (216 stating every attribute,
the rest leaving some unsaid), so their embeddings (and the empty prompt's) are computed once
into a table. Each optional attribute is left out of a caption with probability
`attribute_dropout`, so that the model learns to draw what a caption does not pin down (as
real prompts rarely state everything); the whole caption is dropped to the empty prompt with
probability `caption_dropout`, which is what makes classifier-free guidance work at sampling
time. The loss is weighted by min(SNR, gamma) / SNR (Hang et al., 2023),
which spends less of a short budget on nearly noise-free timesteps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from draft_lightning.testing.tiny_sd import SD_SCHEDULER_CONFIG
from draft_lightning.toy import world


@torch.no_grad()
def caption_table(tokenizer, text_encoder, captions: Sequence[str]) -> torch.Tensor:
    """Frozen CLIP embeddings [N + 1, 77, D] of the captions; the last row is the empty prompt."""
    ids = tokenizer(
        [*captions, ""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids)[0].float()


class UNetTraining(LightningModule):
    """Noise x0 = scale * VAE(image) to a uniform timestep, predict the noise (MSE).

    Args:
        unet: the UNet2DConditionModel to train.
        vae: the trained, frozen VAE (its scaling_factor set).
        captions: every caption the data can hold, in the order of `embeddings`.
        embeddings: `caption_table` of those captions (last row: empty prompt).
        caption_dropout: probability of training on the empty prompt instead.
        attribute_dropout: probability of leaving each of world.OPTIONAL_ATTRIBUTES out of a
            caption (`embeddings` must then hold `world.all_captions(include_partial=True)`).
        min_snr_gamma: gamma of the min-SNR loss weight; None weighs all timesteps equally.
    """

    def __init__(
        self,
        unet,
        vae,
        captions: Sequence[str],
        embeddings: torch.Tensor,
        lr: float = 1e-3,
        warmup_steps: int = 100,
        max_steps: int = 1000,
        caption_dropout: float = 0.1,
        attribute_dropout: float = 0.0,
        min_snr_gamma: float | None = 5.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet = unet
        self.vae = vae.requires_grad_(False).eval()
        self.caption_index = {caption: i for i, caption in enumerate(captions)}
        self.register_buffer("embeddings", embeddings, persistent=False)
        self.noise_scheduler = DDPMScheduler.from_config(SD_SCHEDULER_CONFIG)
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.caption_dropout = caption_dropout
        self.attribute_dropout = attribute_dropout
        self.min_snr_gamma = min_snr_gamma
        self.generator = torch.Generator().manual_seed(seed)

    def context(self, captions: Sequence[str]) -> torch.Tensor:
        """Caption embeddings, each with attributes left unsaid (attribute_dropout), and
        replaced by the empty prompt's with caption_dropout."""
        if self.attribute_dropout > 0:
            unsaid = (
                torch.rand(len(captions), len(world.OPTIONAL_ATTRIBUTES), generator=self.generator)
                < self.attribute_dropout
            )
            captions = [
                world.leave_unsaid(
                    caption,
                    [a for a, out in zip(world.OPTIONAL_ATTRIBUTES, row, strict=True) if out],
                )
                for caption, row in zip(captions, unsaid.tolist(), strict=True)
            ]
        rows = torch.tensor([self.caption_index[c] for c in captions])
        dropped = torch.rand(len(rows), generator=self.generator) < self.caption_dropout
        rows = torch.where(dropped, len(self.embeddings) - 1, rows)
        return self.embeddings[rows.to(self.embeddings.device)]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            posterior = self.vae.encode(batch["images"] * 2.0 - 1.0).latent_dist
            x0 = posterior.sample(generator=self.generator) * self.vae.config.scaling_factor
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=self.generator)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (b,), generator=self.generator)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        prediction = self.unet(noisy, t, self.context(batch["captions"])).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (self.loss_weight(t) * per_sample).mean()
        self.log("loss", loss)
        return loss

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        if self.min_snr_gamma is None:
            return torch.ones(t.shape)
        alpha_bar = self.noise_scheduler.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        return snr.clamp(max=self.min_snr_gamma) / snr

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=1e-2)
        warmup = max(1, self.warmup_steps)
        decay = max(1, self.max_steps - warmup)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / decay)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
