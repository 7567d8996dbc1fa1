"""Each estimator's LoRA gradient on the flow matching families (tiny FLUX.1-dev, tiny
SD3.5-Medium) equals a naive reference: plain autograd through an unrolled Euler loop
(tests/flow_reference.py), with stop-gradients placed as METHOD.md states for flow models."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module, stand_in_for_compiled
from flow_reference import (
    PROMPTS,
    FlowReference,
    assert_same_gradient,
    perturb_lora,
    reference_grad,
    training_step_grad,
)

from draft_lightning.estimators import Draft, DraftK, DraftLV, RandomTruncation, ReFL
from draft_lightning.models.loading import resolve_pretrained
from draft_lightning.samplers.settings import SamplingSettings

ROWS = [0, 1]
GUIDANCE = {"tiny:flux": 3.5, "tiny:sd3": 3.0}  # FLUX: the embedded value; SD3: CFG


@pytest.fixture(scope="module", params=["tiny:flux", "tiny:sd3"])
def setup(request):
    name = request.param
    module = make_module(
        pretrained_model=name,
        sampling=SamplingSettings(num_steps=4, guidance_scale=GUIDANCE[name], resolution=32),
    )
    perturb_lora(module)
    return module, FlowReference(module, resolve_pretrained(name))


def draws(module):
    """The step's draws as the module makes them (one rank: the whole global batch)."""
    rng = module.step_randomness(0)
    return rng.randn(len(PROMPTS), module.pipeline.latent_shape), rng


def test_draft_k(setup):
    module, ref = setup
    k = 2  # a no-grad prefix and a window of more than one step
    ours = training_step_grad(module, DraftK(k))

    def loss_fn():
        noise, _ = draws(module)
        return ref.loss(ref.chain(noise, ROWS, detach_at=len(ref.timesteps) - k), PROMPTS)

    assert_same_gradient(ours, reference_grad(module, loss_fn))


@pytest.mark.parametrize("forward", ["torch checkpoint", "no-grad forward"])
def test_full_draft(setup, forward):
    """ "no-grad forward": each call's discarded forward through the compiled-graph path
    (samplers/recompute.py), the eager transformer standing in for the compiled one."""
    module, ref = setup
    stand_in = stand_in_for_compiled(module) if forward == "no-grad forward" else None
    try:
        ours = training_step_grad(module, Draft())
    finally:
        module.sampler.compiled = None
    if stand_in is not None:
        assert stand_in.calls == module.sampling.num_steps

    def loss_fn():
        noise, _ = draws(module)
        return ref.loss(ref.chain(noise, ROWS, detach_at=0), PROMPTS)

    assert_same_gradient(ours, reference_grad(module, loss_fn))


@pytest.mark.parametrize("include_base", [False, True])
def test_draft_lv_renoises_to_the_last_steps_sigma(setup, include_base):
    module, ref = setup
    n = 2
    ours = training_step_grad(module, DraftLV(n=n, include_base_sample=include_base))

    def loss_fn():
        noise, rng = draws(module)
        last = len(ref.timesteps) - 1
        base = ref.chain(noise, ROWS, detach_at=last if include_base else last + 1)
        if not include_base:
            base = base.detach()
        eps = rng.randn(n * len(PROMPTS), module.pipeline.latent_shape)
        sigma = ref.sigmas[last]
        latents = [base] if include_base else []
        for e in eps.chunk(n):
            renoised = (1 - sigma) * base.detach() + sigma * e  # x_sigma, sigma of the last step
            latents.append(ref.step(renoised, last, ROWS)[0])  # one differentiable Euler step
        return ref.loss(torch.cat(latents), PROMPTS * len(latents))

    assert_same_gradient(ours, reference_grad(module, loss_fn))


def distinct_k_seed(module, estimator) -> int:
    """A seed whose step draws two different K (the interesting case), found, not assumed."""
    for seed in range(20):
        module.seed = seed
        _, rng = draws(module)
        if len(set(estimator.draw_k(len(PROMPTS), 4, rng.generator).tolist())) > 1:
            return seed
    raise AssertionError("no seed in 0..19 draws two different K")


def test_random_truncation_per_trajectory(setup):
    module, ref = setup
    estimator = RandomTruncation(low=1, high=4)
    module.seed = distinct_k_seed(module, estimator)
    try:
        ours = training_step_grad(module, estimator)
    finally:
        module.seed = 0

    def loss_fn():
        module.seed = distinct_k_seed(module, estimator)
        noise, rng = draws(module)
        module.seed = 0
        ks = estimator.draw_k(len(PROMPTS), len(ref.timesteps), rng.generator)
        assert len(set(ks.tolist())) > 1
        total = 0
        for b, k in enumerate(ks.tolist()):  # each trajectory alone, with its own K
            x0 = ref.chain(noise[b : b + 1], [b], detach_at=len(ref.timesteps) - k)
            total = total + ref.loss(x0, [PROMPTS[b]])
        return total / len(PROMPTS)

    assert_same_gradient(ours, reference_grad(module, loss_fn))


def test_refl_decodes_x_minus_sigma_v(setup):
    module, ref = setup
    estimator = ReFL(window=3)
    ours = training_step_grad(module, estimator)

    def loss_fn():
        noise, rng = draws(module)
        index = estimator.draw_step(len(ref.timesteps), rng)
        x = ref.chain(noise, ROWS, detach_at=index, stop=index).detach()
        v = ref.velocity(x, ref.timesteps[index], ROWS)
        return ref.loss(x - ref.sigmas[index] * v, PROMPTS)

    assert_same_gradient(ours, reference_grad(module, loss_fn))


def test_draft_plus_penalises_the_velocity_deviation(setup):
    module, ref = setup
    kl_coeff = 50.0
    module.kl_coeff = kl_coeff
    try:
        ours = training_step_grad(module, DraftK(2))
    finally:
        module.kl_coeff = 0.0

    def loss_fn():
        noise, _ = draws(module)
        steps = len(ref.timesteps)
        x, penalties = noise, []
        for i in range(steps):
            if i == steps - 2:
                x = x.detach()
            x_next, v = ref.step(x, i, ROWS)
            if i >= steps - 2:
                module.pipeline.denoiser.disable_adapters()
                with torch.no_grad():
                    base = ref.velocity(x, ref.timesteps[i], ROWS)
                module.pipeline.denoiser.enable_adapters()
                penalties.append(((v - base) ** 2).mean())
            x = x_next
        return ref.loss(x, PROMPTS) + kl_coeff * torch.stack(penalties).mean()

    assert_same_gradient(ours, reference_grad(module, loss_fn))
    without_penalty = training_step_grad(module, DraftK(2))
    assert not torch.allclose(ours[1], without_penalty[1], rtol=1e-3), "penalty had no effect"
