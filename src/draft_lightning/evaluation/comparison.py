"""Before and after in one picture: the base model's validation images (step 0) above the
tuned adapter's, same prompts and seeds column by column, each captioned with its reward.

Both evaluations are the Evaluator's (thumbnails and scores in (prompt, seed) order), so
nothing is generated again: a column differs only by the adapter.
"""

from __future__ import annotations

import torch

from draft_lightning.evaluation.image_grid import CHAR_WIDTH, captioned_grid, shorten_middle


def paired_samples(base: dict, tuned: dict, max_pairs: int) -> list[tuple[int, int]]:
    """(index in base, index in tuned) of the first `max_pairs` (prompt, seed) pairs that
    both evaluations have, in the tuned evaluation's order."""
    where = {key: i for i, key in enumerate(zip(base["prompts"], base["seeds"], strict=True))}
    pairs = [
        (where[key], j)
        for j, key in enumerate(zip(tuned["prompts"], tuned["seeds"], strict=True))
        if key in where
    ]
    return pairs[:max_pairs]


def comparison_captions(
    base: dict, tuned: dict, pairs: list[tuple[int, int]], max_chars: int
) -> tuple[list[str], list[str]]:
    """Captions of the top (base) and bottom (tuned) rows: which model, the image's reward,
    the seed; the prompt once, under the base image (shortened in the middle if long)."""
    top, bottom = [], []
    for i, j in pairs:
        prompt = shorten_middle(base["prompts"][i], max_chars)
        top.append(f"base {base['scores'][i]['reward']:.3f} seed {base['seeds'][i]}\n{prompt}")
        bottom.append(f"tuned {tuned['scores'][j]['reward']:.3f} seed {tuned['seeds'][j]}")
    return top, bottom


def comparison_grid(
    base: dict,
    tuned: dict,
    cell_size: int = 96,
    max_pairs: int = 8,
    prompt_lines: int = 4,
) -> torch.Tensor:
    """[3, H, W] uint8: one column per (prompt, seed), base model on top, tuned below.

    Args:
        base: the step-0 evaluation (the base model's), as the module keeps it.
        tuned: a later evaluation of the same prompts and seeds.
        cell_size: each image is resized to this many pixels square.
        max_pairs: at most this many columns.
        prompt_lines: caption lines a prompt may take before it is shortened in the middle.
    """
    pairs = paired_samples(base, tuned, max_pairs)
    if not pairs:
        raise ValueError("the two evaluations share no (prompt, seed) pair")
    max_chars = prompt_lines * max(8, cell_size // CHAR_WIDTH)
    top, bottom = comparison_captions(base, tuned, pairs, max_chars)
    cells = torch.stack(
        [base["thumbnails"][i] for i, _ in pairs] + [tuned["thumbnails"][j] for _, j in pairs]
    )
    cells = resize(cells.float() / 255, cell_size)
    # Each row's caption strip fits its longest caption; the rows are drawn apart and stacked.
    rows = [
        captioned_grid(cells[: len(pairs)], top, columns=len(pairs), caption_lines=None),
        captioned_grid(cells[len(pairs) :], bottom, columns=len(pairs), caption_lines=None),
    ]
    return torch.cat(rows, dim=1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square `size`: small images enlarged by whole pixels (a 32 px toy image stays sharp),
    larger ones shrunk with antialiasing."""
    if images.shape[-1] <= size:
        return torch.nn.functional.interpolate(images, size=(size, size), mode="nearest-exact")
    return torch.nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True
    )
