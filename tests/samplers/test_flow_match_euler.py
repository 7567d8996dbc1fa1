"""Stateless flow matching: schedules equal the scheduler's and the closed-form shifts, steps
equal the scheduler's step, and a plain loop over them reproduces diffusers' FLUX and SD3
pipelines' final latents from the same starting noise."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

from draft_lightning.models.families.flux_latents import flux_velocity, pack_latents
from draft_lightning.models.families.flux_text import FluxPromptEncoder
from draft_lightning.models.families.sd3_latents import sd3_velocity
from draft_lightning.models.families.sd3_text import SD3PromptEncoder
from draft_lightning.samplers.flow_match_euler import (
    euler_step,
    flow_schedule,
    flux_base_sigmas,
    image_seq_len,
    predict_x0,
    renoise,
)
from draft_lightning.samplers.guidance import guided_prediction
from draft_lightning.testing.tiny_flux import (
    FLUX_DEV_SCHEDULER_CONFIG,
    FLUX_SCHNELL_SCHEDULER_CONFIG,
    tiny_flux_path,
    tiny_flux_schnell_path,
)
from draft_lightning.testing.tiny_sd3 import SD3_SCHEDULER_CONFIG, tiny_sd3_path

PROMPTS = ["a misty mountain valley at sunrise", "a yellow triangle"]
STEPS = 3


def static_shift(sigma, shift: float):
    return shift * sigma / (1 + (shift - 1) * sigma)


def test_sd3_schedule_is_the_static_shift_of_the_schedulers_spacing() -> None:
    schedule = flow_schedule(SD3_SCHEDULER_CONFIG, 4)
    # The scheduler spaces levels between its own first and last training sigmas, which it
    # stores already shifted, then shifts again: the last level is shift(shift(1/1000)).
    lowest = static_shift(1 / 1000, 3.0)
    expected = static_shift(np.linspace(1.0, lowest, 4), 3.0)
    assert schedule.sigmas.dtype == torch.float32 and len(schedule) == 4
    np.testing.assert_allclose(schedule.sigmas[:-1].numpy(), expected, rtol=0, atol=1e-6)
    assert schedule.sigmas[-1] == 0  # the terminal level: the last step lands on the image
    assert torch.equal(schedule.timesteps, schedule.sigmas[:-1] * 1000)
    # Static: no dependence on the image size.
    assert torch.equal(
        flow_schedule(SD3_SCHEDULER_CONFIG, 4, image_seq_len=4096).sigmas, schedule.sigmas
    )


@pytest.mark.parametrize("tokens", [64, 256, 1024, 4096])
def test_flux_dev_schedule_is_the_resolution_dependent_shift(tokens: int) -> None:
    schedule = flow_schedule(
        FLUX_DEV_SCHEDULER_CONFIG, 4, base_sigmas=flux_base_sigmas(4), image_seq_len=tokens
    )
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    base = np.linspace(1.0, 1 / 4, 4)
    expected = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
    np.testing.assert_allclose(schedule.sigmas[:-1].numpy(), expected, rtol=0, atol=1e-6)
    assert schedule.sigmas[-1] == 0
    assert torch.equal(schedule.timesteps, schedule.sigmas[:-1] * 1000)


def test_flux_dev_shift_grows_with_the_image_and_needs_its_size() -> None:
    def sigmas(height: int, width: int) -> torch.Tensor:
        tokens = image_seq_len(height, width)
        return flow_schedule(
            FLUX_DEV_SCHEDULER_CONFIG, 4, base_sigmas=flux_base_sigmas(4), image_seq_len=tokens
        ).sigmas

    small, wide, large = sigmas(16, 16), sigmas(16, 32), sigmas(128, 128)
    assert (small[1:-1] < wide[1:-1]).all() and (wide[1:-1] < large[1:-1]).all()
    assert small[0] == large[0] == 1 and small[-1] == large[-1] == 0
    with pytest.raises(ValueError, match="image_seq_len is required"):
        flow_schedule(FLUX_DEV_SCHEDULER_CONFIG, 4, base_sigmas=flux_base_sigmas(4))


def test_flux_schnell_schedule_is_unshifted() -> None:
    schedule = flow_schedule(
        FLUX_SCHNELL_SCHEDULER_CONFIG, 4, base_sigmas=flux_base_sigmas(4), image_seq_len=4096
    )
    expected = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    torch.testing.assert_close(schedule.sigmas, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_euler_step_equals_the_schedulers_step(dtype: torch.dtype) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG)
    scheduler.set_timesteps(5)
    schedule = flow_schedule(SD3_SCHEDULER_CONFIG, 5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 4, 4, generator=g).to(dtype)
    rows = []
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(2, 16, 4, 4, generator=g).to(dtype)
        expected = scheduler.step(v, t, x, return_dict=False)[0]
        ours = euler_step(x, v, schedule.sigmas[i], schedule.sigmas[i + 1])
        assert ours.dtype == expected.dtype == dtype
        assert torch.equal(ours, expected)
        rows.append((x, v, schedule.sigmas[i], schedule.sigmas[i + 1]))
        x = expected
    # One level per row steps each row as the scalar call with its level would.
    (x0, v0, s0, n0), (x3, v3, s3, n3) = rows[0], rows[3]
    per_row = euler_step(
        torch.stack([x0[0], x3[1]]),
        torch.stack([v0[0], v3[1]]),
        torch.stack([s0, s3]),
        torch.stack([n0, n3]),
    )
    assert torch.equal(per_row[0], euler_step(x0, v0, s0, n0)[0])
    assert torch.equal(per_row[1], euler_step(x3, v3, s3, n3)[1])


def test_renoise_equals_scale_noise_and_predict_x0_inverts_it() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG)
    scheduler.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 2, 16, 4, 4, generator=g)
    for sigma, t in zip(scheduler.sigmas[:-1], scheduler.timesteps, strict=True):
        expected = scheduler.scale_noise(x0, t[None], eps)
        noisy = renoise(x0, eps, sigma)
        assert torch.equal(noisy, expected)
        # With the exact velocity eps - x0, the x0 prediction recovers x0.
        torch.testing.assert_close(predict_x0(noisy, eps - x0, sigma), x0)
    assert torch.equal(renoise(x0, eps, 0.0), x0) and torch.equal(renoise(x0, eps, 1.0), eps)
    both = renoise(x0, eps, torch.tensor([0.0, 1.0]))
    assert torch.equal(both[0], x0[0]) and torch.equal(both[1], eps[1])


def load(cls, folder):
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(denoiser, x: torch.Tensor, schedule, conditioning, guidance: float) -> torch.Tensor:
    """The plain no-grad Euler loop the lead's sampler will wrap."""
    with torch.no_grad():
        for i, t in enumerate(schedule.timesteps):
            v = guided_prediction(denoiser, x, t, conditioning, guidance)
            x = euler_step(x, v, schedule.sigmas[i], schedule.sigmas[i + 1])
    return x


@pytest.mark.parametrize(
    ("variant", "guidance", "size"),
    [("dev", 3.5, (16, 16)), ("dev", 3.5, (16, 32)), ("schnell", 0.0, (16, 16))],
    ids=["dev-32x32px", "dev-32x64px", "schnell-32x32px"],
)
def test_flux_loop_equals_flux_pipeline(variant: str, guidance: float, size) -> None:
    pipe = load(FluxPipeline, tiny_flux_path() if variant == "dev" else tiny_flux_schnell_path())
    encoder = FluxPromptEncoder.from_pipeline(pipe)
    height, width = size
    x_t = torch.randn(2, 16, height, width, generator=torch.Generator().manual_seed(3))
    expected = pipe(
        PROMPTS,
        height=2 * height,  # pixels: the tiny VAE halves each side
        width=2 * width,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        latents=pack_latents(x_t),
        output_type="latent",
    ).images
    schedule = flow_schedule(
        pipe.scheduler.config,
        STEPS,
        base_sigmas=flux_base_sigmas(STEPS),
        image_seq_len=image_seq_len(height, width),
    )
    assert torch.equal(schedule.sigmas, pipe.scheduler.sigmas)
    assert torch.equal(schedule.timesteps, pipe.scheduler.timesteps)
    conditioning = encoder.condition(PROMPTS, guidance)
    ours = sample(
        functools.partial(flux_velocity, pipe.transformer), x_t, schedule, conditioning, guidance
    )
    torch.testing.assert_close(pack_latents(ours), expected, rtol=0, atol=1e-5)
    assert (ours - x_t).abs().max() > 0.1  # the loop moved the latents


@pytest.mark.parametrize("size", [(16, 16), (16, 32)], ids=["32x32px", "32x64px"])
def test_sd3_loop_with_guidance_equals_sd3_pipeline(size) -> None:
    pipe = load(StableDiffusion3Pipeline, tiny_sd3_path())
    encoder = SD3PromptEncoder.from_pipeline(pipe)
    guidance = 5.0
    height, width = size
    x_t = torch.randn(2, 16, height, width, generator=torch.Generator().manual_seed(4))
    expected = pipe(
        PROMPTS,
        height=2 * height,
        width=2 * width,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        latents=x_t,
        output_type="latent",
    ).images
    schedule = flow_schedule(pipe.scheduler.config, STEPS)
    assert torch.equal(schedule.sigmas, pipe.scheduler.sigmas)
    assert torch.equal(schedule.timesteps, pipe.scheduler.timesteps)
    conditioning = encoder.condition(PROMPTS, guidance)
    assert conditioning.uncond is not None
    denoiser = functools.partial(sd3_velocity, pipe.transformer)
    ours = sample(denoiser, x_t, schedule, conditioning, guidance)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    # Guidance is in play: without it the same loop ends elsewhere.
    unguided = sample(denoiser, x_t, schedule, encoder.condition(PROMPTS, 1.0), 1.0)
    assert (unguided - expected).abs().max() > 1e-3
