"""Flow matching: the stateless schedules equal the scheduler's and the closed-form shifts,
steps equal the scheduler's step, and FlowMatchEulerSampler steps, re-noises, predicts x0 and
recovers Direct-Align's x0 with them. (That sampling with it reproduces diffusers' FLUX and SD3
pipelines is tested with each family: tests/models/families/test_flux.py, test_sd3.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.samplers.flow_match_euler import (
    FlowMatchEulerSampler,
    euler_step,
    flow_schedule,
    flux_base_sigmas,
    image_seq_len,
    predict_x0,
    renoise,
)
from draft_lightning.samplers.settings import SamplingSettings
from draft_lightning.testing.tiny_flux import (
    FLUX_DEV_SCHEDULER_CONFIG,
    FLUX_SCHNELL_SCHEDULER_CONFIG,
)
from draft_lightning.testing.tiny_sd3 import SD3_SCHEDULER_CONFIG


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


def linear_velocity(denoiser, latents, timestep, inputs):
    """A made-up 'model': v = w * latents + c * timestep / 1000 (per row)."""
    t = torch.as_tensor(timestep).reshape(-1, 1, 1, 1) / 1000
    return denoiser.weight * latents + inputs["c"].view(-1, 1, 1, 1) * t


def make_sampler(steps: int = 4, guidance: float = 1.0) -> FlowMatchEulerSampler:
    denoiser = torch.nn.Module()
    denoiser.weight = torch.nn.Parameter(torch.tensor(0.3))
    settings = SamplingSettings(num_steps=steps, guidance_scale=guidance, resolution=8)
    return FlowMatchEulerSampler(
        denoiser, linear_velocity, flow_schedule(SD3_SCHEDULER_CONFIG, steps), settings
    )


def test_the_sampler_steps_and_predicts_x0_with_the_schedule() -> None:
    sampler = make_sampler()
    schedule = flow_schedule(SD3_SCHEDULER_CONFIG, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 4, 4, generator=g)
    text = Conditioning({"c": torch.tensor([1.0, -1.0])})
    with torch.no_grad():
        result = sampler.sample(x, text, grad_from=4, stop=2)
    expected = x
    for i in range(2):
        v = linear_velocity(sampler.denoiser, expected, schedule.timesteps[i], text.cond)
        previous, expected = (
            expected,
            euler_step(expected, v, schedule.sigmas[i], schedule.sigmas[i + 1]),
        )
    assert torch.equal(result.latents, expected)
    assert torch.equal(result.pred_x0, predict_x0(previous, v, schedule.sigmas[1]))
    assert sampler.num_steps == 4 and torch.equal(sampler.timestep(1, x), schedule.timesteps[1])
    eps = torch.randn(x.shape, generator=g)
    assert torch.equal(sampler.renoise(x, eps, 2), renoise(x, eps, schedule.sigmas[2]))


def test_recover_x0_is_exact_for_the_true_velocity_at_any_level() -> None:
    """With v = eps - x0 (the velocity the model is trained to predict), stepping from any
    level sigma to any sigma_next and removing the known noise gives x0 back."""
    sampler = make_sampler()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 2, 16, 4, 4, generator=g)
    sigma = sampler.snap_level(torch.tensor([0.9, 0.35]))
    x = sampler.noise_to_level(x0, eps, sigma)
    torch.testing.assert_close(x[1], 0.65 * x0[1] + 0.35 * eps[1])
    for sigma_next in (torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.1])):
        recovered = sampler.recover_x0(x, eps - x0, eps, sigma, sigma_next)
        torch.testing.assert_close(recovered, x0, rtol=1e-5, atol=1e-5)
    timestep = sampler.level_timestep(sigma, x)
    torch.testing.assert_close(timestep, torch.tensor([900.0, 350.0]))
    # A wrong velocity is not hidden by the recovery: its error shows, scaled.
    wrong = sampler.recover_x0(x, eps - x0 + 1.0, eps, sigma, torch.zeros(2))
    torch.testing.assert_close(wrong - x0, -sigma.view(-1, 1, 1, 1).expand_as(x0))


def test_per_row_timesteps_are_batched_with_the_uncond_rows() -> None:
    sampler = make_sampler(guidance=2.0)
    x = torch.ones(2, 16, 2, 2)
    text = Conditioning({"c": torch.tensor([1.0, 2.0])}, {"c": torch.zeros(2)})
    with torch.no_grad():
        guided = sampler.predict_at_level(x, torch.tensor([0.5, 1.0]), text)
    cond = 0.3 * x + torch.tensor([0.5, 2.0]).view(-1, 1, 1, 1)
    torch.testing.assert_close(guided, 0.3 * x + 2.0 * (cond - 0.3 * x))
