"""The sampler without gradient is diffusers' pipeline: same images for the same noise."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module
from diffusers import DDIMScheduler, StableDiffusionPipeline

from draft_lightning.errors import ConfigError
from draft_lightning.samplers.settings import SamplingSettings


@pytest.mark.parametrize(
    ("model", "guidance"), [("tiny:sd", 1.0), ("tiny:sd", 4.0), ("tiny:sd-v", 4.0)]
)
def test_no_grad_sampling_reproduces_the_diffusers_pipeline(tiny_sd, model, guidance):
    from draft_lightning.models.loading import resolve_pretrained

    module = make_module(
        pretrained_model=model,
        sampling=SamplingSettings(num_steps=5, guidance_scale=guidance, resolution=32),
    )
    prompts, seeds = ["a cat", "an astronaut riding a horse"], [3, 7]
    ours = module.generate(prompts, seeds)

    pipe = StableDiffusionPipeline.from_pretrained(resolve_pretrained(model), safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.stack(
        [
            torch.randn(module.pipeline.latent_shape, generator=torch.Generator().manual_seed(s))
            for s in seeds
        ]
    )
    theirs = pipe(
        prompts,
        height=32,
        width=32,
        num_inference_steps=5,
        guidance_scale=guidance,
        latents=noise,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_eta_noise_is_seeded_and_changes_the_sample(tiny_sd):
    eta = make_module(
        sampling=SamplingSettings(num_steps=5, guidance_scale=3.0, eta=1.0, resolution=32)
    )
    ddim = make_module(sampling=SamplingSettings(num_steps=5, guidance_scale=3.0, resolution=32))
    first, second = eta.generate(["a cat"], [1]), eta.generate(["a cat"], [1])
    assert torch.equal(first, second)
    assert not torch.allclose(first, ddim.generate(["a cat"], [1]), atol=1e-3)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_steps", 0), ("guidance_scale", -1.0), ("eta", -0.1), ("resolution", 0)],
)
def test_bad_sampling_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"sampling.{field}={value}"):
        SamplingSettings(**{field: value})
