"""Pixel-statistic rewards: differentiable, weight-free, so they run anywhere and in tests.

All of them compute in at least float32 (bfloat16/float16 inputs are upcast, float64 is kept)
and return one score per image, shape [B].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from draft_lightning.errors import ConfigError
from draft_lightning.rewards.base import Reward

# ITU-R BT.601 luma weights, the ones JPEG/JFIF uses for Y.
_LUMA = (0.299, 0.587, 0.114)

# ITU-T T.81 Annex K, Table K.1: luminance quantisation table (quality 50), row-major.
JPEG_LUMA_Q50 = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """Check the [B, 3, H, W] contract and upcast low-precision floats to float32."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
    return images.to(torch.promote_types(images.dtype, torch.float32))


def luma(images: torch.Tensor) -> torch.Tensor:
    """Rec.601 luma Y = 0.299 R + 0.587 G + 0.114 B of [B, 3, H, W] images -> [B, H, W]."""
    r, g, b = images.unbind(dim=1)
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


class Brightness(Reward):
    """Mean Rec.601 luma per image, in [0, 1]. A sanity-check reward: easy to hack, easy to see."""

    def __init__(self, name: str = "brightness") -> None:
        super().__init__(name)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return luma(_as_float(images)).flatten(1).mean(dim=1)


class Colorfulness(Reward):
    """Hasler and Suesstrunk (2003) colourfulness M = sigma_rgyb + 0.3 * mu_rgyb per image.

    With rg = R - G and yb = (R + G) / 2 - B over all pixels of one image,
    sigma_rgyb = sqrt(var(rg) + var(yb)) and mu_rgyb = sqrt(mean(rg)^2 + mean(yb)^2), using
    population (biased) statistics. Pixels are in [0, 1], so M is the paper's 0-255 figure
    divided by 255. `eps` sits inside both square roots because d sqrt(x)/dx is infinite at
    x = 0: without it a flat (zero-variance) image would give NaN gradients. It biases a grey
    image's score to about 1.3 * sqrt(eps) instead of exactly 0.
    """

    def __init__(self, name: str = "colorfulness", eps: float = 1e-12) -> None:
        """
        Args:
            name: Key of this reward in logged score parts.
            eps: Added inside the square roots so the gradient stays finite on flat images.
        """
        super().__init__(name)
        if not (eps > 0 and math.isfinite(eps)):
            raise ConfigError(f"{type(self).__name__} eps={eps!r}: must be a finite number > 0")
        self.eps = eps

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        r, g, b = _as_float(images).flatten(2).unbind(dim=1)  # each [B, H*W]
        rg = r - g
        yb = 0.5 * (r + g) - b
        mean_rg, mean_yb = rg.mean(dim=1), yb.mean(dim=1)
        var_rg = (rg - mean_rg[:, None]).square().mean(dim=1)
        var_yb = (yb - mean_yb[:, None]).square().mean(dim=1)
        sigma = torch.sqrt(var_rg + var_yb + self.eps)
        mu = torch.sqrt(mean_rg.square() + mean_yb.square() + self.eps)
        return sigma + 0.3 * mu


def dct_matrix(
    n: int = 8, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): coefficients of a block X are D @ X @ D.T."""
    k = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


def jpeg_quant_table(quality: int = 50) -> torch.Tensor:
    """Annex K luminance table scaled the IJG (libjpeg) way for `quality` in 1..100, as float32.

    scale = 5000 / quality below 50, else 200 - 2 * quality; entries are
    floor((q50 * scale + 50) / 100) clamped to [1, 255] (baseline JPEG).
    """
    _check_quality(quality)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    q50 = torch.tensor(JPEG_LUMA_Q50, dtype=torch.int64)
    return ((q50 * scale + 50) // 100).clamp(1, 255).to(torch.float32)


def _check_quality(quality: int) -> None:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"JPEGCompressibility quality={quality!r}: must be an integer in 1..100")


class JPEGCompressibility(Reward):
    """Negated differentiable estimate of JPEG size in bits per 8x8 block (higher = smaller file).

    Mirrors the lossy part of a baseline JPEG encoder on the luma channel: Y in 0..255, minus 128,
    8x8 blocks, orthonormal 2-D DCT-II, division by the quantisation table. The entropy coder is
    replaced by a smooth bit-cost estimate, sum_k log2(1 + |c_k / Q_k|) per block, averaged over
    blocks. As in JPEG, each block's DC coefficient is coded as the difference from the previous
    block's DC in raster order (the first against 0), so flat regions are cheap whatever their
    brightness. Sides that are not a multiple of 8 are reflect-padded (replicate-padded when a
    side is too small to reflect), so every pixel is scored and receives gradient.
    Chroma is ignored: it is subsampled and coarsely quantised by real encoders.
    """

    def __init__(self, quality: int = 50, name: str = "jpeg_compressibility") -> None:
        """
        Args:
            quality: IJG quality (1..100) used to scale the Annex K luminance quantisation table;
                lower quality = coarser quantisation = only coarse structure costs bits.
            name: Key of this reward in logged score parts.
        """
        super().__init__(name)
        self.quality = quality
        self.register_buffer("quant", jpeg_quant_table(quality), persistent=False)
        self.register_buffer("dct", dct_matrix(8), persistent=False)

    def bits_per_block(self, images: torch.Tensor) -> torch.Tensor:
        """Estimated bits per 8x8 luma block, per image: shape [B]."""
        x = _as_float(images)
        y = luma(x) * 255.0 - 128.0  # [B, H, W], JPEG level shift
        y = _pad_to_multiple(y, 8)
        b, h, w = y.shape
        blocks = y.reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3)  # [B, h/8, w/8, 8, 8]
        d = self.dct.to(x.dtype)
        coeffs = d @ blocks @ d.T
        coeffs = coeffs.reshape(b, -1, 64)  # raster order of blocks, row-major coefficients
        dc = coeffs[..., 0]
        dc_diff = torch.diff(dc, dim=1, prepend=torch.zeros_like(dc[:, :1]))
        coeffs = torch.cat([dc_diff[..., None], coeffs[..., 1:]], dim=-1)
        q = self.quant.to(x.dtype).reshape(64)
        return torch.log2(1.0 + (coeffs / q).abs()).sum(dim=-1).mean(dim=1)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return -self.bits_per_block(images)

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


def _pad_to_multiple(y: torch.Tensor, m: int) -> torch.Tensor:
    """Pad [B, H, W] at the bottom/right to multiples of m (reflect, else replicate)."""
    h, w = y.shape[-2:]
    ph, pw = -h % m, -w % m
    if ph == 0 and pw == 0:
        return y
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(y[:, None], (0, pw, 0, ph), mode=mode)[:, 0]
