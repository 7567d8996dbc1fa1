"""Sizes of the toy text-to-image model: diffusers' own AutoencoderKL and UNet2DConditionModel.

The defaults are what `make toy` trains in its CPU budget: a VAE with three blocks
(downsampling factor 4, 32x32 pixels <-> 4x8x8 latents) and a two-level UNet with
cross-attention at both levels. Tests shrink them to train in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from draft_lightning.toy import world


@dataclass(frozen=True)
class ToyArchitecture:
    """Widths and depths of the VAE and UNet.

    Args:
        vae_channels: AutoencoderKL block_out_channels; n blocks downsample by 2^(n-1).
        vae_layers: resnet layers per VAE block.
        latent_channels: VAE latent channels (SD 1.x: 4).
        unet_channels: UNet block_out_channels, one cross-attention block per level.
        unet_layers: resnet layers per UNet down block.
        attention_head_dim: channels per attention head in the UNet.
        norm_groups: GroupNorm groups in both (SD: 32; fewer suits narrow layers).
    """

    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_layers: int = 1
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 1
    attention_head_dim: int = 8
    norm_groups: int = 8

    @property
    def latent_size(self) -> int:
        return world.IMAGE_SIZE // 2 ** (len(self.vae_channels) - 1)


def build_vae(arch: ToyArchitecture):
    """A fresh AutoencoderKL (scaling_factor is set after training, from the latents' spread)."""
    from diffusers import AutoencoderKL

    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(arch.vae_channels),
        layers_per_block=arch.vae_layers,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.norm_groups,
        sample_size=world.IMAGE_SIZE,
    )


def build_unet(arch: ToyArchitecture, cross_attention_dim: int):
    """A fresh epsilon-prediction UNet2DConditionModel over the VAE's latents."""
    from diffusers import UNet2DConditionModel

    n = len(arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        block_out_channels=tuple(arch.unet_channels),
        layers_per_block=arch.unet_layers,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=arch.attention_head_dim,
        norm_num_groups=arch.norm_groups,
    )
