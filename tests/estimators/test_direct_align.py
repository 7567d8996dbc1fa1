"""Direct-Align (SRPO): its LoRA gradient equals a naive reference on tiny FLUX.1-dev, tiny
SD3.5-Medium and (levels snapped to DDIM's training timesteps) tiny SD 1.x; bad settings are
refused in one line before any weights load."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module, stand_in_for_compiled
from diffusers import DDIMScheduler
from flow_reference import (
    PROMPTS,
    FlowReference,
    assert_same_gradient,
    perturb_lora,
    reference_grad,
    training_step_grad,
)

from draft_lightning.errors import ConfigError
from draft_lightning.estimators import DirectAlign
from draft_lightning.models.loading import resolve_pretrained
from draft_lightning.samplers.settings import SamplingSettings

ROWS = [0, 1]


def flow_module(name: str, guidance: float):
    module = make_module(
        pretrained_model=name,
        sampling=SamplingSettings(num_steps=3, guidance_scale=guidance, resolution=32),
    )
    perturb_lora(module)
    return module


@pytest.mark.parametrize(
    ("name", "guidance", "estimator"),
    [
        ("tiny:flux", 3.5, DirectAlign()),  # drawn levels, all the way, the initial noise
        ("tiny:flux", 3.5, DirectAlign(sigma=0.6, step=0.25, noise="fresh")),
        ("tiny:sd3", 3.0, DirectAlign(sigma_range=(0.3, 0.95), step=0.1)),
        ("tiny:flux", 3.5, DirectAlign(step=0.5)),
    ],
    ids=[
        "flux-srpo-online",
        "flux-partial-step-fresh-noise",
        "sd3-partial-step",
        "flux-no-grad-forward",  # the call's forward through the compiled-graph path
    ],
)
def test_flow_gradient_matches_the_closed_form_reference(request, name, guidance, estimator):
    module = flow_module(name, guidance)
    ref = FlowReference(module, resolve_pretrained(name))
    no_grad_forward = "no-grad-forward" in request.node.callspec.id
    stand_in = stand_in_for_compiled(module) if no_grad_forward else None
    ours = training_step_grad(module, estimator)
    if stand_in is not None:  # the chain to x0 without gradient, then the one call with it
        assert stand_in.calls == module.sampling.num_steps + 1

    def loss_fn():
        rng = module.step_randomness(0)
        noise = rng.randn(len(PROMPTS), module.pipeline.latent_shape)
        with torch.no_grad():
            x0 = ref.chain(noise, ROWS, detach_at=0)
        sigma = estimator.draw_levels(len(PROMPTS), rng.generator)
        assert estimator.sigma is not None or sigma[0] != sigma[1]
        eps = noise if estimator.noise == "initial" else rng.randn(2, module.pipeline.latent_shape)
        sigma_next = (sigma - (estimator.step or 1.0)).clamp(min=0)
        s, s_next = sigma.view(-1, 1, 1, 1), sigma_next.view(-1, 1, 1, 1)
        x = (1 - s) * x0 + s * eps
        v = ref.velocity(x, sigma * 1000, ROWS)  # the one differentiable call
        x_next = x + (s_next - s) * v
        return ref.loss((x_next - s_next * eps) / (1 - s_next), PROMPTS)

    assert_same_gradient(ours, reference_grad(module, loss_fn))


def test_ddim_gradient_matches_the_reference_at_the_nearest_training_timestep(tiny_sd):
    """On SD 1.x: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps at the training timestep whose
    sigma_t = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar)) is nearest the drawn level."""
    module = make_module()  # tiny:sd, 4 DDIM steps, guidance 3
    perturb_lora(module)
    estimator = DirectAlign(step=0.2)
    ours = training_step_grad(module, estimator)

    encoder = module.pipeline.prompt_encoder
    with torch.no_grad():
        cond = encoder.embed(PROMPTS)
        uncond = encoder.embed([""]).expand(len(PROMPTS), -1, -1)
    unet, vae = module.pipeline.denoiser, module.pipeline.vae
    scheduler = DDIMScheduler.from_config(module.sampler.scheduler.config)
    scheduler.set_timesteps(module.sampling.num_steps)
    abar = scheduler.alphas_cumprod
    levels = (1 - abar).sqrt() / (abar.sqrt() + (1 - abar).sqrt())

    def eps_hat(x, t):
        e_c = unet(x, t, encoder_hidden_states=cond).sample
        e_u = unet(x, t, encoder_hidden_states=uncond).sample
        return e_u + module.sampling.guidance_scale * (e_c - e_u)

    def loss_fn():
        rng = module.step_randomness(0)
        noise = rng.randn(len(PROMPTS), module.pipeline.latent_shape)  # x_T: the known noise
        x0 = noise
        with torch.no_grad():
            for t in scheduler.timesteps:
                x0 = scheduler.step(eps_hat(x0, t), t, x0).prev_sample
        sigma = estimator.draw_levels(len(PROMPTS), rng.generator)
        t = (sigma[:, None] - levels[None]).abs().argmin(1)
        t_next = (((sigma - 0.2).clamp(min=0))[:, None] - levels[None]).abs().argmin(1)
        a, b = abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
        a2 = abar[t_next].sqrt().view(-1, 1, 1, 1)
        b2 = (1 - abar[t_next]).sqrt().view(-1, 1, 1, 1)
        x_t = a * x0 + b * noise
        e = eps_hat(x_t, t)  # the one differentiable call, one timestep per row
        x0_hat = (x_t - b * e) / a
        recovered = a2 * x0_hat + b2 * e  # the DDIM (eta 0) step to t_next ...
        recovered = (recovered - b2 * noise) / a2  # ... with its known noise removed
        images = (vae.decode(recovered / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        return -module.reward(images, PROMPTS).mean()

    assert_same_gradient(ours, reference_grad(module, loss_fn))


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"sigma": 0.995}, "sigma=0.995"),
        ({"sigma": 0.0}, "sigma=0.0"),
        ({"sigma_range": (0.5, 1.0)}, "sigma_range=[0.5, 1.0]"),
        ({"sigma_range": (0.6, 0.4)}, "sigma_range=[0.6, 0.4]"),
        ({"step": 0.0}, "step=0.0"),
        ({"noise": "gaussian"}, "noise='gaussian'"),
    ],
)
def test_bad_settings_are_one_line(kwargs, text):
    with pytest.raises(ConfigError, match=text.replace("[", r"\[").replace("]", r"\]")) as error:
        DirectAlign(**kwargs)
    assert "\n" not in str(error.value)


def test_the_draft_plus_penalty_is_refused_before_weights_load():
    with pytest.raises(ConfigError, match="kl_coeff=0.1.*DirectAlign takes none"):
        make_module(pretrained_model="no/such-model", estimator=DirectAlign(), kl_coeff=0.1)
