"""FLUX.1's latent layout and denoiser call, as in diffusers' FluxPipeline.

FLUX's transformer sees a latent image as a sequence of tokens: each 2x2 patch of the
16-channel VAE latent becomes one 64-feature token, in row-major patch order, with a
position id [0, patch row, patch column] for its rotary embedding (text tokens get id 0).
We keep latents unpacked, (batch, 16, H, W) like every other family, and pack only around
the transformer call: packing is a permutation, so the Euler update and re-noising give the
same numbers on either layout, and the sampler need not know about tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

PATCH = 2  # latent pixels per token side


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2x2 patch a token, channel-major inside."""
    b, c, h, w = latents.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"FLUX latents need an even height and width, got {h}x{w}")
    patches = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents` for a (height, width) latent."""
    b, _, features = tokens.shape
    c = features // (PATCH * PATCH)
    patches = tokens.view(b, height // PATCH, width // PATCH, c, PATCH, PATCH)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def latent_image_ids(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(H/2 * W/2, 3) rotary position ids of the packed tokens: [0, patch row, patch col]."""
    rows, cols = height // PATCH, width // PATCH
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def text_ids(
    seq_len: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(seq_len, 3) zeros: text tokens all sit at rotary position 0."""
    return torch.zeros(seq_len, 3, device=device, dtype=dtype)


def flux_velocity(
    transformer: nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor | float,
    cond: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """The transformer's velocity for unpacked `latents` at `timestep` (sigma * 1000, the
    schedule's value), same shape as `latents`.

    `cond` holds the transformer's keyword inputs (`encoder_hidden_states`,
    `pooled_projections`, and `guidance` for FLUX.1-dev). As in FluxPipeline: the timestep
    goes in the latents' dtype divided by 1000 (the transformer multiplies by 1000 again);
    the guidance value goes in float32 (the transformer scales it by 1000 too); the position
    ids are rebuilt for this latent size.
    """
    batch, _, height, width = latents.shape
    hidden = cond["encoder_hidden_states"]
    t = torch.as_tensor(timestep, device=latents.device).expand(batch).to(latents.dtype)
    tokens = transformer(
        hidden_states=pack_latents(latents),
        timestep=t / 1000,
        txt_ids=text_ids(hidden.shape[1], hidden.device, hidden.dtype),
        img_ids=latent_image_ids(height, width, hidden.device, hidden.dtype),
        return_dict=False,
        **cond,
    )[0]
    return unpack_latents(tokens, height, width)
