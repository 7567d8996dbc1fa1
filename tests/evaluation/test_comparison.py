"""The before/after picture: base on top, tuned below, column by column the same prompt and
seed, each image captioned with its own reward."""

from __future__ import annotations

import pytest
import torch

from draft_lightning.evaluation.comparison import (
    comparison_captions,
    comparison_grid,
    paired_samples,
)


def evaluation(prompts, seeds, rewards, colour):
    """An Evaluator-style evaluation whose every thumbnail is one flat colour."""
    thumbnails = [torch.full((3, 32, 32), 0, dtype=torch.uint8) for _ in prompts]
    for thumbnail in thumbnails:
        thumbnail[colour] = 255
    return {
        "prompts": list(prompts),
        "seeds": list(seeds),
        "thumbnails": thumbnails,
        "scores": [{"reward": r} for r in rewards],
    }


def test_pairs_match_prompt_and_seed_whatever_the_order():
    base = evaluation(["a", "a", "b"], [0, 1, 0], [0.1, 0.2, 0.3], colour=0)
    tuned = evaluation(["b", "a", "c"], [0, 1, 0], [0.9, 0.8, 0.7], colour=2)
    assert paired_samples(base, tuned, max_pairs=8) == [(2, 0), (1, 1)]  # "c" is not in base
    assert paired_samples(base, tuned, max_pairs=1) == [(2, 0)]
    top, bottom = comparison_captions(base, tuned, [(2, 0), (1, 1)], max_chars=40)
    assert top == ["base 0.300 seed 0\nb", "base 0.200 seed 1\na"]
    assert bottom == ["tuned 0.900 seed 0", "tuned 0.800 seed 1"]


def test_grid_puts_base_images_on_top_and_tuned_below_at_the_cell_size():
    prompts = ["a large red square in the middle of a white background", "a small circle"]
    base = evaluation(prompts, [0, 0], [0.125, 0.25], colour=0)  # red
    tuned = evaluation(prompts, [0, 0], [0.875, 0.75], colour=2)  # blue
    grid = comparison_grid(base, tuned, cell_size=48, max_pairs=8)
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3 and grid.shape[2] == 2 * 48
    red, blue = torch.tensor([255, 0, 0]), torch.tensor([0, 0, 255])
    # The first cell is at the top left; the tuned row starts below the base row's captions.
    assert torch.equal(grid[:, 10, 10], red) and torch.equal(grid[:, 10, 58], red)
    column = grid[:, :, 10].T  # pixels down the first column
    blue_rows = [y for y in range(grid.shape[1]) if torch.equal(column[y], blue)]
    assert len(blue_rows) == 48 and blue_rows[0] > 48  # a whole cell, below the captions
    base_strip, tuned_strip = grid[:, 48 : blue_rows[0]], grid[:, blue_rows[-1] + 1 :]
    assert (base_strip > 200).all(dim=0).any() and (tuned_strip > 200).all(dim=0).any()  # text
    assert base_strip.shape[1] > tuned_strip.shape[1]  # the prompt is under the base row only
    with pytest.raises(ValueError, match="share no"):
        comparison_grid(base, evaluation(["x"], [0], [0.5], colour=1))
