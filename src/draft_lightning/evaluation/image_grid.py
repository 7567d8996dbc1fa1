"""A grid of images with a caption strip under each cell, as one image tensor.

TensorBoard shows one image per tag and step with no per-cell captions, so the prompt and
its reward are drawn into the picture; with the same prompts and seeds at every
evaluation, the step slider then shows each cell evolving.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch


def captioned_grid(
    images: torch.Tensor, captions: Sequence[str], columns: int, caption_lines: int = 3
) -> torch.Tensor:
    """[N, 3, H, W] floats in [0, 1] and N captions -> [3, rows * (H + strip), columns * W]
    uint8, row-major, white text on black strips. Captions wrap to the cell width; newlines
    start a new line; lines past `caption_lines` are dropped, so put what matters first."""
    from PIL import Image, ImageDraw, ImageFont

    if images.shape[0] != len(captions):
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    count, _, height, width = images.shape
    rows = -(-count // columns)
    font = ImageFont.load_default()
    line_height = 12
    strip = caption_lines * line_height + 4
    canvas = Image.new("RGB", (columns * width, rows * (height + strip)), "black")
    draw = ImageDraw.Draw(canvas)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    chars_per_line = max(8, width // 6)
    for index in range(count):
        row, column = divmod(index, columns)
        x, y = column * width, row * (height + strip)
        cell = Image.fromarray(pixels[index].permute(1, 2, 0).numpy())
        canvas.paste(cell, (x, y))
        lines = [
            wrapped
            for paragraph in captions[index].splitlines()
            for wrapped in textwrap.wrap(paragraph, chars_per_line)
        ][:caption_lines]
        for line_index, line in enumerate(lines):
            position = (x + 2, y + height + 2 + line_index * line_height)
            draw.text(position, line, fill="white", font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).contiguous()
