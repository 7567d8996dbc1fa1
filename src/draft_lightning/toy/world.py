"""The toy world: one anti-aliased shape on a plain background, and the caption saying so.

Every sample is a `Scene`, fully determined by (seed, index): its five attributes (shape,
colour, size, position, background) are drawn uniformly and independently, plus a little
continuous jitter (offset, scale, tint) so that a model must learn a distribution rather
than memorise 216 pictures. Rendering evaluates signed distances at pixel centres and turns
them into coverage, so edges are anti-aliased (smooth images are easier for a small VAE).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import product

import numpy as np
import torch

WORLD_VERSION = 1
IMAGE_SIZE = 32

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
SIZES = {"small": 5.0, "large": 8.0}  # half-width of the shape, in pixels at 32x32
POSITIONS = {"left": 0.32, "middle": 0.5, "right": 0.68}  # horizontal centre, fraction of width
BACKGROUNDS = {
    "white": (0.95, 0.95, 0.95),
    "grey": (0.50, 0.50, 0.50),
    "black": (0.05, 0.05, 0.05),
}
# Attribute name -> allowed values, in label order. Classifier heads follow this order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}
POSITION_PHRASES = {
    "left": "on the left of",
    "middle": "in the middle of",
    "right": "on the right of",
}

MAX_OFFSET = 1.0  # pixels, each axis
MAX_SCALE = 0.1  # relative size jitter
MAX_TINT = 0.04  # per colour channel, shape and background alike


@dataclass(frozen=True)
class Scene:
    """One sample of the world: its attributes and the jitter that makes it unique."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    offset: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    shape_tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    background_tint: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        for name, allowed in ATTRIBUTES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")

    @property
    def attributes(self) -> tuple[str, str, str, str, str]:
        """(shape, colour, size, position, background): what the caption states."""
        return (self.shape, self.colour, self.size, self.position, self.background)

    @property
    def caption(self) -> str:
        """e.g. "a small red circle on the left of a white background"."""
        where = POSITION_PHRASES[self.position]
        return f"a {self.size} {self.colour} {self.shape} {where} a {self.background} background"

    def labels(self) -> list[int]:
        """Index of each attribute's value in ATTRIBUTES order."""
        return [
            ATTRIBUTES[name].index(value)
            for name, value in zip(ATTRIBUTES, self.attributes, strict=True)
        ]

    def centre(self, size: int = IMAGE_SIZE) -> tuple[float, float]:
        """(x, y) of the shape's centre (a triangle's centroid), in pixels."""
        return (
            POSITIONS[self.position] * size + self.offset[0] * size / IMAGE_SIZE,
            0.5 * size + self.offset[1] * size / IMAGE_SIZE,
        )

    def half_width(self, size: int = IMAGE_SIZE) -> float:
        return SIZES[self.size] * self.scale * size / IMAGE_SIZE

    def shape_rgb(self) -> tuple[float, float, float]:
        return _tinted(COLOURS[self.colour], self.shape_tint)

    def background_rgb(self) -> tuple[float, float, float]:
        return _tinted(BACKGROUNDS[self.background], self.background_tint)


def _tinted(rgb: Sequence[float], tint: Sequence[float]) -> tuple[float, float, float]:
    return tuple(float(np.clip(c + t, 0.0, 1.0)) for c, t in zip(rgb, tint, strict=True))


def scene(seed: int, index: int) -> Scene:
    """The sample `index` of the world with `seed`: the same pair always gives the same scene."""
    rng = np.random.default_rng([WORLD_VERSION, seed, index])
    picks = [values[rng.integers(len(values))] for values in ATTRIBUTES.values()]
    offset = rng.uniform(-MAX_OFFSET, MAX_OFFSET, size=2)
    scale = 1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE)
    tints = rng.uniform(-MAX_TINT, MAX_TINT, size=6)
    return Scene(
        *picks,
        offset=(float(offset[0]), float(offset[1])),
        scale=float(scale),
        shape_tint=tuple(float(t) for t in tints[:3]),
        background_tint=tuple(float(t) for t in tints[3:]),
    )


def scenes(seed: int, indices: Iterable[int]) -> list[Scene]:
    return [scene(seed, int(i)) for i in indices]


def signed_distance(
    shapes: Sequence[str], centres: torch.Tensor, half_widths: torch.Tensor, size: int
) -> torch.Tensor:
    """Signed distance in pixels from each pixel centre to each shape's edge, [B, H, W]
    (negative inside). Exact for circles and squares; triangles take the largest distance
    to their three edge lines, exact inside and near the edges, which is all coverage needs."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    x = coords[None, None, :] - centres[:, 0, None, None]
    y = coords[None, :, None] - centres[:, 1, None, None]
    r = half_widths[:, None, None]
    circle = torch.sqrt(x**2 + y**2) - r
    square = torch.maximum(x.abs(), y.abs()) - r
    # Upright equilateral triangle (y points down) with centroid at the centre and inradius
    # 0.6 r, so its area is close to the circle's and the square's.
    inradius = 0.6 * r
    sin60 = 3**0.5 / 2
    bottom = (y - inradius).expand_as(circle)
    triangle = torch.stack(
        [bottom, sin60 * x - 0.5 * y - inradius, -sin60 * x - 0.5 * y - inradius]
    ).amax(dim=0)
    kind = torch.tensor([SHAPES.index(s) for s in shapes])[:, None, None]
    return torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))


def render(batch: Sequence[Scene], size: int = IMAGE_SIZE) -> torch.Tensor:
    """Images of the scenes, [B, 3, size, size] float32 in [0, 1]."""
    centres = torch.tensor([s.centre(size) for s in batch], dtype=torch.float32)
    half_widths = torch.tensor([s.half_width(size) for s in batch], dtype=torch.float32)
    distance = signed_distance([s.shape for s in batch], centres, half_widths, size)
    coverage = (0.5 - distance).clamp(0.0, 1.0)[:, None]  # box-filtered edge, one pixel wide
    fg = torch.tensor([s.shape_rgb() for s in batch], dtype=torch.float32)[:, :, None, None]
    bg = torch.tensor([s.background_rgb() for s in batch], dtype=torch.float32)[:, :, None, None]
    return coverage * fg + (1.0 - coverage) * bg


@cache
def _captions() -> dict[str, tuple[str, ...]]:
    return {Scene(*values).caption: values for values in product(*ATTRIBUTES.values())}


def all_captions() -> list[str]:
    """Every caption the world can produce (216), in a fixed order."""
    return list(_captions())


def parse_caption(caption: str) -> dict[str, str] | None:
    """The attributes a world caption states, or None for any other text."""
    values = _captions().get(caption)
    return None if values is None else dict(zip(ATTRIBUTES, values, strict=True))
