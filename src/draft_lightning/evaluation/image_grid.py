"""A grid of images with a caption strip under each cell, as one image tensor.

TensorBoard shows one image per tag and step with no per-cell captions, so the prompt and
its reward are drawn into the picture; with the same prompts and seeds at every
evaluation, the step slider then shows each cell evolving.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CHAR_WIDTH = 6  # pixels of a wide character of PIL's default font, for length estimates
LINE_HEIGHT = 12


def captioned_grid(
    images: torch.Tensor, captions: Sequence[str], columns: int, caption_lines: int | None = 3
) -> torch.Tensor:
    """[N, 3, H, W] floats in [0, 1] and N captions -> [3, rows * (H + strip), columns * W]
    uint8, row-major, white text on black strips. Captions wrap at word boundaries to the
    cell's width in pixels; newlines start a new line. The strip holds `caption_lines` lines
    (later ones are dropped), or with None as many as the longest caption needs."""
    from PIL import Image, ImageDraw, ImageFont

    if images.shape[0] != len(captions):
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    count, _, height, width = images.shape
    rows = -(-count // columns)
    font = ImageFont.load_default()
    wrapped = [wrap_caption(caption, font, width - 4) for caption in captions]
    if caption_lines is None:
        caption_lines = max((len(lines) for lines in wrapped), default=0)
    strip = caption_lines * LINE_HEIGHT + 4
    canvas = Image.new("RGB", (columns * width, rows * (height + strip)), "black")
    draw = ImageDraw.Draw(canvas)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    for index in range(count):
        row, column = divmod(index, columns)
        x, y = column * width, row * (height + strip)
        cell = Image.fromarray(pixels[index].permute(1, 2, 0).numpy())
        canvas.paste(cell, (x, y))
        for line_index, line in enumerate(wrapped[index][:caption_lines]):
            position = (x + 2, y + height + 2 + line_index * LINE_HEIGHT)
            draw.text(position, line, fill="white", font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).contiguous()


def wrap_caption(caption: str, font, width: int) -> list[str]:
    """The caption's lines, each at most `width` pixels in `font`: words are kept whole
    where they fit on a line (a longer one is split), each newline starts a new line."""
    lines: list[str] = []
    for paragraph in caption.splitlines():
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and font.getlength(word) > width:  # split a long word
                cut = 1
                while cut < len(word) - 1 and font.getlength(word[: cut + 1]) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def shorten_middle(text: str, max_chars: int) -> str:
    """`text` with its middle replaced by "..." when longer than `max_chars`: a prompt's
    start and end (its subject and its style words) both stay readable."""
    if len(text) <= max_chars:
        return text
    keep = max(2, max_chars - 3)
    head = (keep + 1) // 2
    return f"{text[:head].rstrip()}...{text[len(text) - (keep - head) :].lstrip()}"


def evaluation_grid(
    evaluation: dict,
    cell_size: int,
    max_images: int,
    columns: int | None = None,
    prompt_lines: int = 4,
) -> torch.Tensor:
    """[3, H, W] uint8: an evaluation's first `max_images` samples (Evaluator's thumbnails,
    in (prompt, seed) order), each captioned with its reward, seed and whole prompt (one
    longer than `prompt_lines` lines is shortened in the middle); one column per seed
    unless `columns` says otherwise."""
    count = min(max_images, len(evaluation["prompts"]))
    cells = torch.stack(evaluation["thumbnails"][:count]).float() / 255
    cells = torch.nn.functional.interpolate(
        cells, size=(cell_size, cell_size), mode="bilinear", antialias=True
    )
    max_chars = prompt_lines * max(8, cell_size // CHAR_WIDTH)
    captions = [
        f"{scores['reward']:.3f} seed {seed}\n{shorten_middle(prompt, max_chars)}"
        for prompt, seed, scores in zip(
            evaluation["prompts"][:count],
            evaluation["seeds"][:count],
            evaluation["scores"][:count],
            strict=True,
        )
    ]
    columns = columns or len(set(evaluation["seeds"]))
    return captioned_grid(cells, captions, columns=min(columns, count), caption_lines=None)
