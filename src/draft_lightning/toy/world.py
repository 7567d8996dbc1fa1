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
# A caption may leave any attribute but the shape unsaid ("a large square on a white
# background"): the model then draws it freely, which is what a reward can act on.
OPTIONAL_ATTRIBUTES = ("colour", "size", "position", "background")

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
        return describe(**dict(zip(ATTRIBUTES, self.attributes, strict=True)))

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


def describe(
    shape: str,
    colour: str | None = None,
    size: str | None = None,
    position: str | None = None,
    background: str | None = None,
) -> str:
    """The caption stating the given attributes; None leaves one unsaid.

    e.g. describe("square", size="large", background="white") is
    "a large square on a white background"."""
    words = ["a", *(value for value in (size, colour) if value is not None), shape]
    if position is not None:
        where = POSITION_PHRASES[position]
        words.append(where if background is not None else where.removesuffix(" of"))
    elif background is not None:
        words.append("on")
    if background is not None:
        words.append(f"a {background} background")
    return " ".join(words)


@cache
def _captions() -> dict[str, dict[str, str]]:
    """Every caption the world can produce -> the attributes it states. The 216 full captions
    come first, in ATTRIBUTES' product order, then those that leave attributes unsaid."""
    full = {
        describe(**stated): stated
        for stated in (dict(zip(ATTRIBUTES, v, strict=True)) for v in product(*ATTRIBUTES.values()))
    }
    choices = [
        ATTRIBUTES[name] + ((None,) if name in OPTIONAL_ATTRIBUTES else ()) for name in ATTRIBUTES
    ]
    partial = {}
    for values in product(*choices):
        stated = {k: v for k, v in zip(ATTRIBUTES, values, strict=True) if v is not None}
        if len(stated) < len(ATTRIBUTES):
            partial[describe(**stated)] = stated
    return full | partial


def all_captions(include_partial: bool = False) -> list[str]:
    """Every caption stating all five attributes (216), in a fixed order; with
    `include_partial`, then every caption that leaves some of OPTIONAL_ATTRIBUTES unsaid (720
    in all)."""
    captions = list(_captions())
    return captions if include_partial else captions[: _count_full()]


@cache
def _count_full() -> int:
    return sum(len(stated) == len(ATTRIBUTES) for stated in _captions().values())


def parse_caption(caption: str) -> dict[str, str] | None:
    """The attributes a world caption states (only those it states), or None for any other
    text."""
    stated = _captions().get(caption)
    return None if stated is None else dict(stated)


def leave_unsaid(caption: str, attributes: Iterable[str]) -> str:
    """The caption without the given attributes (those of OPTIONAL_ATTRIBUTES)."""
    stated = parse_caption(caption)
    if stated is None:
        raise ValueError(f"not a toy world caption: {caption!r}")
    dropped = set(attributes)
    if not dropped <= set(OPTIONAL_ATTRIBUTES):
        raise ValueError(f"only {OPTIONAL_ATTRIBUTES} can be left unsaid, got {sorted(dropped)}")
    return describe(**{k: v for k, v in stated.items() if k not in dropped})
