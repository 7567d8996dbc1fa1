"""What a toy image shows, by the renderer instead of a network: the nearest clean shape.

A classifier trained on rendered shapes can be fooled by what it never saw: reward-tuned
models draw blobs that both the reward's classifier and the independent judge read as circles.
The world's ground truth is its renderer, so an image is compared with the clean single shapes
the renderer can draw: each of the three shapes with its centre at x 6-26 px and y 10-22 px
and half-width 3.5-10 px (the world's positions, sizes and jitter with room to spare; a
half-pixel grid, refined in eighth pixels around the best), in the two colours (shape,
background) that fit best by least squares per channel. The distance to the nearest one says
how far the image is from drawing one clean shape, and which shape that is; no threshold is
learned by a network.

Colours are fitted without bounds, which can only bring a blob closer to some shape. A shape
beyond the ranges above counts as far from every clean shape, and an image that the best
shape explains less than half of (a flat or noisy picture) shows no shape at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from draft_lightning.toy import world

CENTRES_X = np.arange(6.0, 26.01, 0.5)  # pixels, at 32 px: the world's left..right +- jitter
CENTRES_Y = np.arange(10.0, 22.01, 0.5)
HALF_WIDTHS = np.arange(3.5, 10.01, 0.5)  # small 5 and large 8, +-10% scale, and beyond
# Below this fraction of the image's variance explained by the best shape, it shows none: a
# flat image is at distance 0 from every "shape" of the background's colour.
MIN_EXPLAINED = 0.5


@dataclass(frozen=True)
class ShapeFit:
    """Per image: the nearest clean shape (None: no shape), the root-mean-square distance
    (0..1 pixel values) to the nearest of each shape and to the nearest of all, and the
    fraction of the image's variance the nearest explains."""

    shape: list[str | None]
    distance: torch.Tensor  # [N]
    distance_to: dict[str, torch.Tensor]  # shape -> [N]
    explained: torch.Tensor  # [N]

    def clean(self, tolerance: float, shape: str | None = None) -> torch.Tensor:
        """[N] bool: the image shows a shape (`shape`, if given) no farther than
        `tolerance` from a clean one."""
        shows = [s is not None and (shape is None or s == shape) for s in self.shape]
        return torch.tensor(shows, dtype=torch.bool) & (self.distance <= tolerance)


def _centred_coverage(shape: str, placements: torch.Tensor) -> torch.Tensor:
    """Coverage of `shape` at each placement (x, y, half-width), [placements, H * W], with
    its mean removed: the fit's intercept is the background colour."""
    distance = world.signed_distance(
        [shape] * len(placements), placements[:, :2], placements[:, 2], world.IMAGE_SIZE
    )
    coverage = (0.5 - distance).clamp(0.0, 1.0).flatten(1)
    return coverage - coverage.mean(dim=1, keepdim=True)


@cache
def _grid() -> torch.Tensor:
    """Every placement of the coarse search, [M, 3] (x, y, half-width)."""
    x, y, r = np.meshgrid(CENTRES_X, CENTRES_Y, HALF_WIDTHS, indexing="ij")
    return torch.tensor(np.stack([x.ravel(), y.ravel(), r.ravel()], axis=1), dtype=torch.float32)


@cache
def _grid_coverage(shape: str) -> torch.Tensor:
    return _centred_coverage(shape, _grid())


# The fine search around the coarse optimum: eighth-pixel steps within the coarse cell.
REFINE = torch.cartesian_prod(*[torch.arange(-0.25, 0.26, 0.125)] * 3)


def _residual(centred: torch.Tensor, total: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Residual sum of squares of each image ([N, 3, P], centred) fitted as bg + (fg - bg) c
    with each centred coverage c ([M, P]): |x - mean x|^2 - (c . x)^2 / |c|^2, summed over
    channels, [N, M]."""
    explained = torch.einsum("ncp,mp->nmc", centred, coverage).pow(2)
    explained = explained / coverage.pow(2).sum(dim=1)[None, :, None]
    return (total[:, None, :] - explained).sum(dim=2).clamp(min=0.0)


@torch.no_grad()
def nearest_shape(images: torch.Tensor) -> ShapeFit:
    """Fit `images` ([N, 3, 32, 32], values in [0, 1]) with one clean shape each: a search
    over the half-pixel grid, then eighth-pixel steps around the best placement of each shape
    (the grid alone leaves up to 0.05 of distance on a clean high-contrast shape)."""
    if images.shape[1:] != (3, world.IMAGE_SIZE, world.IMAGE_SIZE):
        raise ValueError(
            f"images of shape {tuple(images.shape)}: expected [N, 3, {world.IMAGE_SIZE}, "
            f"{world.IMAGE_SIZE}]"
        )
    pixels = images.float().flatten(2)  # [N, 3, P]
    centred = pixels - pixels.mean(dim=2, keepdim=True)
    total = centred.pow(2).sum(dim=2)  # [N, 3]
    count = pixels.shape[1] * pixels.shape[2]
    distance_to = {}
    for shape in world.SHAPES:
        coarse = _residual(centred, total, _grid_coverage(shape)).argmin(dim=1)
        best = []
        for n, index in enumerate(coarse.tolist()):
            around = _grid()[index] + REFINE
            best.append(
                _residual(
                    centred[n : n + 1], total[n : n + 1], _centred_coverage(shape, around)
                ).min()
            )
        distance_to[shape] = (torch.stack(best) / count).sqrt()
    stacked = torch.stack([distance_to[s] for s in world.SHAPES], dim=1)
    distance, index = stacked.min(dim=1)
    variance = total.sum(dim=1)
    residual = distance.pow(2) * count
    explained = torch.where(variance > 0, 1 - residual / variance.clamp(min=1e-12), 0.0)
    shapes = [
        world.SHAPES[i] if share >= MIN_EXPLAINED else None
        for i, share in zip(index.tolist(), explained.tolist(), strict=True)
    ]
    return ShapeFit(shapes, distance, distance_to, explained)
