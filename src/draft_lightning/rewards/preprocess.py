"""Differentiable image preprocessing for reward models, in torch end to end.

Reward models publish their preprocessing as PIL/uint8 pipelines (open_clip's transforms,
transformers' CLIPImageProcessor). Those cut the gradient, so `ImageTransform` redoes the
same geometry on float tensors: resize (antialiased, PIL's bicubic kernel), centre crop or
pad, then the model's mean and std. No uint8 rounding and no clamping happen on this path,
so it differs from the reference only by the reference's own quantisation (see the parity
tests in tests/rewards/test_models.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

ResizeMode = Literal["shortest", "longest", "squash"]
Interpolation = Literal["bicubic", "bilinear"]


@dataclass(frozen=True)
class ImageTransform:
    """Images in [0, 1], [B, 3, H, W] -> normalised model input, [B, 3, size, size].

    Args:
        size: Side of the square the model sees.
        mean: Per-channel mean subtracted after resizing (values for pixels in [0, 1]).
        std: Per-channel std divided by after subtracting the mean.
        resize_mode: "shortest": the short side becomes `resize_to`, then a centre crop to
            `size` (CLIP's default); "longest": the long side becomes `size`, then the short
            side is padded with `fill` (HPSv2's scorer); "squash": both sides become `size`.
        resize_to: Short side after resizing in "shortest" mode; defaults to `size`.
        interpolation: Resampling kernel; antialiased whenever an image shrinks.
        crop_offset: How an odd crop margin is split: "round" as torchvision's CenterCrop
            (open_clip), "floor" as transformers' image processors.
        fill: Pixel value (in [0, 1], before normalising) of padding in "longest" mode.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: ResizeMode = "shortest"
    resize_to: int | None = None
    interpolation: Interpolation = "bicubic"
    crop_offset: Literal["round", "floor"] = "round"
    fill: float = 0.0

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"resize_mode={self.resize_mode!r} is not shortest/longest/squash")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation={self.interpolation!r} is not bicubic/bilinear")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {self.mean}, {self.std}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        x = images.to(torch.promote_types(images.dtype, torch.float32))
        if self.resize_mode == "shortest":
            x = self._center_crop(self._resize(x, shortest_size(x.shape[-2:], self.short_side)))
        elif self.resize_mode == "longest":
            x = self._pad(self._resize(x, longest_size(x.shape[-2:], self.size)))
        else:
            x = self._resize(x, (self.size, self.size))
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @property
    def short_side(self) -> int:
        return self.resize_to if self.resize_to is not None else self.size

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        # antialias=True also selects PIL's bicubic kernel (a = -0.5) when enlarging.
        return F.interpolate(x, size=size, mode=self.interpolation, antialias=True)

    def _center_crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < self.size or w < self.size:
            raise ValueError(f"cannot crop {self.size} px from a {h}x{w} image")
        top, left = self._offset(h - self.size), self._offset(w - self.size)
        return x[..., top : top + self.size, left : left + self.size]

    def _offset(self, margin: int) -> int:
        return int(round(margin / 2.0)) if self.crop_offset == "round" else margin // 2

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self.size - x.shape[-2], self.size - x.shape[-1]
        if pad_h == 0 and pad_w == 0:
            return x
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        return F.pad(x, padding, value=self.fill)

    @classmethod
    def from_open_clip(cls, cfg: Mapping[str, Any]) -> ImageTransform:
        """The transform open_clip builds for inference from a model's `preprocess_cfg`."""
        size = _square(cfg["size"])
        interpolation = cfg.get("interpolation") or "bicubic"
        if interpolation == "random":  # open_clip itself falls back to bicubic at inference
            interpolation = "bicubic"
        return cls(
            size=size,
            mean=_three(cfg["mean"]),
            std=_three(cfg["std"]),
            resize_mode=cfg.get("resize_mode") or "shortest",
            interpolation=interpolation,
            crop_offset="round",
            fill=float(cfg.get("fill_color", 0)) / 255.0,
        )

    @classmethod
    def from_hf(cls, processor: Any) -> ImageTransform:
        """The geometry of a transformers CLIPImageProcessor (shortest edge + crop, or squash)."""
        size = dict(processor.size)
        resample = int(getattr(processor, "resample", 3))
        interpolation = {2: "bilinear", 3: "bicubic"}.get(resample)
        if interpolation is None:
            raise ValueError(f"unsupported resample={resample} (only bilinear=2, bicubic=3)")
        rescales = processor.do_rescale and abs(processor.rescale_factor - 1 / 255) < 1e-9
        if not (processor.do_resize and rescales):
            raise ValueError("only processors that resize and rescale to [0, 1] are supported")
        if processor.do_normalize:
            mean, std = _three(processor.image_mean), _three(processor.image_std)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if size.get("shortest_edge"):
            if not processor.do_center_crop:
                raise ValueError("a shortest_edge resize without a centre crop is not square")
            crop = dict(processor.crop_size)
            if crop["height"] != crop["width"]:
                raise ValueError(f"non-square crop_size {crop} is not supported")
            return cls(
                size=int(crop["height"]),
                mean=mean,
                std=std,
                resize_to=int(size["shortest_edge"]),
                interpolation=interpolation,
                crop_offset="floor",
            )
        return cls(
            size=_square((size["height"], size["width"])),
            mean=mean,
            std=std,
            resize_mode="squash",
            interpolation=interpolation,
        )


def shortest_size(hw: Sequence[int], short: int) -> tuple[int, int]:
    """(h, w) with the short side = `short`, the long side truncated as torchvision does."""
    h, w = int(hw[0]), int(hw[1])
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def longest_size(hw: Sequence[int], long: int) -> tuple[int, int]:
    """(h, w) with the long side = `long`, the short side rounded (open_clip, HPSv2)."""
    h, w = int(hw[0]), int(hw[1])
    scale = long / max(h, w)
    return round(h * scale), round(w * scale)


def _square(size: int | Sequence[int]) -> int:
    if isinstance(size, int):
        return size
    h, w = (int(s) for s in size)
    if h != w:
        raise ValueError(f"non-square model input {h}x{w} is not supported")
    return h


def _three(values: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, int | float):
        return (float(values),) * 3
    a, b, c = (float(v) for v in values)
    return a, b, c
