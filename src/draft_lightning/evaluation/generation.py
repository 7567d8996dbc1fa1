"""Images for prompts and per-image seeds, with no gradient anywhere: what validation,
testing and `lightning predict` show. Each seed fixes its image whatever batch it is in."""

from __future__ import annotations

import torch

from draft_lightning.models.pipeline import Pipeline
from draft_lightning.randomness import StepRandomness


@torch.no_grad()
def generate(pipeline: Pipeline, prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """Images in [0, 1] for `prompts`, x_T drawn from each image's own seed."""
    text = pipeline.condition(prompts)
    noise = pipeline.seeded_noise(seeds)
    rng = StepRandomness(int(seeds[0]), 0, 0)  # only DDIM's eta noise draws from it
    sampler = pipeline.sampler
    result = sampler.sample(noise, text, sampler.num_steps, rng)
    return pipeline.decode(result.latents)
