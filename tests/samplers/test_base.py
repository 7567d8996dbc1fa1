"""The gradient-window loop (samplers/base.py) on its own: a made-up sampler kind over a
one-layer denoiser, so what is tested is the loop, not DDIM or any model family."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

from draft_lightning.samplers.base import Sampler, SampleResult
from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.samplers.settings import SamplingSettings


class Scale(nn.Module):
    """prediction = w * latents + cond (per sample): enough to see where gradient flows."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.calls: list[bool] = []  # grad enabled at each call

    def forward(self, latents, timestep, cond):
        self.calls.append(torch.is_grad_enabled())
        return self.w * latents + cond.view(-1, 1) + 0 * timestep


class HalfStep(Sampler):
    """x <- x - 0.5 * prediction; re-noise = x0 + index * noise (a made-up kind)."""

    @property
    def num_steps(self) -> int:
        return self.settings.num_steps

    def timestep(self, index, latents):
        return torch.tensor(float(index))

    def update(self, latents, index, prediction, rng, copies):
        return SampleResult(latents - 0.5 * prediction, latents - prediction)

    def renoise(self, x0, noise, index):
        return x0 + index * noise


def call(denoiser, latents, timestep, inputs):
    return denoiser(latents, timestep, inputs["cond"])


def make(steps=4, guidance=1.0, **options):
    denoiser = Scale()
    settings = SamplingSettings(num_steps=steps, guidance_scale=guidance, resolution=8)
    return denoiser, HalfStep(denoiser, call, settings, **options)


def text(batch=2, guided=False):
    cond = {"cond": torch.arange(batch, dtype=torch.float32)}
    return Conditioning(cond, {"cond": torch.zeros(batch)} if guided else None)


def naive(w, x, c, steps, grad_from):
    """The same chain unrolled by hand; steps before grad_from see a detached w."""
    for i in range(steps):
        weight = w if i >= grad_from else w.detach()
        if i == grad_from:
            x = x.detach()
        x = x - 0.5 * (weight * x + c.view(-1, 1))
    return x


@pytest.mark.parametrize("grad_from", [0, 2, 3])
def test_only_the_window_runs_with_autograd_and_the_gradient_matches_an_unrolled_loop(grad_from):
    denoiser, sampler = make()
    x = torch.ones(2, 3)
    out = sampler.sample(x, text(), grad_from=grad_from).latents
    assert denoiser.calls == [i >= grad_from for i in range(4)]
    (grad,) = torch.autograd.grad(out.sum(), denoiser.w)
    w = denoiser.w.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(naive(w, x, text().cond["cond"], 4, grad_from).sum(), w)
    torch.testing.assert_close(grad, expected)


def test_per_sample_windows_detach_each_sample_where_its_own_window_starts():
    denoiser, sampler = make()
    x = torch.ones(2, 3)
    out = sampler.sample(x, text(), grad_from=torch.tensor([1, 3])).latents
    c = text().cond["cond"]
    for row, start in enumerate([1, 3]):
        (grad,) = torch.autograd.grad(out[row].sum(), denoiser.w, retain_graph=True)
        w = denoiser.w.detach().clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(naive(w, x, c, 4, start)[row].sum(), w)
        torch.testing.assert_close(grad, expected)


def test_guidance_batches_cond_and_uncond_in_one_call():
    denoiser, sampler = make(guidance=3.0)
    x = torch.ones(2, 3)
    prediction = sampler.guided(x, 0, text(guided=True))
    assert len(denoiser.calls) == 1
    uncond = 0.5 * x
    cond = 0.5 * x + torch.arange(2.0).view(-1, 1)
    torch.testing.assert_close(prediction, uncond + 3.0 * (cond - uncond))


def test_observer_sees_differentiated_steps_only_and_the_no_grad_context_wraps_the_prefix():
    entered = []

    @contextmanager
    def prefix():
        entered.append(torch.is_grad_enabled())
        yield

    denoiser, sampler = make(no_grad_context=prefix)
    seen = []
    with sampler.observing(lambda s, x, index, t, p, w: seen.append(index)):
        sampler.sample(torch.ones(2, 3), text(), grad_from=2)
    assert seen == [2, 3] and len(entered) == 1
    sampler.sample(torch.ones(2, 3), text(), grad_from=0)
    assert len(entered) == 1  # no prefix, no context


def test_checkpointing_recomputes_the_call_in_the_backward_pass():
    denoiser, sampler = make(gradient_checkpointing=True)
    out = sampler.sample(torch.ones(2, 3), text(), grad_from=3).latents
    calls = len(denoiser.calls)
    out.sum().backward()
    assert len(denoiser.calls) == calls + 1
    denoiser, plain = make(gradient_checkpointing=False)
    out = plain.sample(torch.ones(2, 3), text(), grad_from=3).latents
    calls = len(denoiser.calls)
    out.sum().backward()
    assert len(denoiser.calls) == calls
