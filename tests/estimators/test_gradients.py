"""Each estimator's LoRA gradient equals a naive reference: plain autograd through an
unrolled DDIM loop (diffusers scheduler + UNet, separate cond/uncond calls, no
checkpointing, no no_grad prefix), with stop-gradients placed as METHOD.md states."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module, stand_in_for_compiled
from diffusers import DDIMScheduler

from draft_lightning.estimators import Draft, DraftK, DraftLV, RandomTruncation, ReFL

PROMPTS = ["a cat", "a watercolour dog"]


@pytest.fixture(scope="module")
def module(tiny_sd):
    torch.manual_seed(0)
    m = make_module()
    # LoRA B starts at zero, which would make every A gradient trivially zero: perturb it.
    with torch.no_grad():
        for name, p in m.pipeline.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return m


class Reference:
    """The naive sampler, written independently of draft_lightning.samplers."""

    def __init__(self, module):
        self.m = module
        self.scheduler = DDIMScheduler.from_config(module.sampler.scheduler.config)
        self.scheduler.set_timesteps(module.sampling.num_steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]
        self.guidance = module.sampling.guidance_scale
        tok = module.pipeline.prompt_encoder.tokenizer
        enc = module.pipeline.prompt_encoder.text_encoder

        def embed(prompts):
            ids = tok(
                prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            ).input_ids
            with torch.no_grad():
                return enc(ids).last_hidden_state

        self.cond = embed(PROMPTS)
        self.uncond = embed([""] * len(PROMPTS))

    def eps(self, x, t, rows):
        unet = self.m.pipeline.denoiser
        e_c = unet(x, t, encoder_hidden_states=self.cond[rows]).sample
        e_u = unet(x, t, encoder_hidden_states=self.uncond[rows]).sample
        return e_u + self.guidance * (e_c - e_u)

    def step(self, x, i, rows):
        t = self.timesteps[i]
        return self.scheduler.step(self.eps(x, t, rows), t, x)

    def chain(self, x, rows, detach_at, stop=None):
        """Unrolled loop with autograd on everywhere; the latent entering step `detach_at`
        is detached (what DRaFT-K means); returns the last scheduler output."""
        stop = len(self.timesteps) if stop is None else stop
        out = None
        for i in range(stop):
            if i == detach_at:
                x = x.detach()
            out = self.step(x, i, rows)
            x = out.prev_sample
        return out

    def loss_from_latents(self, latents, prompts):
        vae = self.m.pipeline.vae
        images = (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        return -self.m.reward(images, prompts).mean()


def lora_grads(module):
    return torch.cat([p.grad.flatten() for p in module.trainable_parameters()])


def training_step_grad(module, estimator):
    module.estimator = estimator
    module.zero_grad(set_to_none=False)
    for p in module.trainable_parameters():
        p.grad = None
    loss = module.training_step({"prompts": PROMPTS}, 0)
    loss.backward()
    return loss.detach(), lora_grads(module)


def reference_grad(module, loss_fn):
    for p in module.trainable_parameters():
        p.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach(), lora_grads(module)


def assert_same_gradient(ours, ref):
    loss, g = ours
    ref_loss, g_ref = ref
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert g_ref.abs().max() > 0, "reference gradient is zero: the test would prove nothing"
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4 * float(g_ref.abs().max()))


def noise_and_generator(module):
    """The step's draws as the module makes them (one rank: the whole global batch)."""
    rng = module.step_randomness(0)
    return rng.randn(len(PROMPTS), module.pipeline.latent_shape), rng


def test_draft_k_matches_reference(module):
    for k in (1, 3):
        ours = training_step_grad(module, DraftK(k))

        def loss_fn(k=k):
            ref = Reference(module)
            noise, _ = noise_and_generator(module)
            rows = list(range(len(PROMPTS)))
            x0 = ref.chain(noise, rows, detach_at=len(ref.timesteps) - k).prev_sample
            return ref.loss_from_latents(x0, PROMPTS)

        assert_same_gradient(ours, reference_grad(module, loss_fn))


@pytest.mark.parametrize("checkpointing", ["torch", "none", "no-grad forward"])
def test_full_draft_matches_reference_with_and_without_checkpointing(module, checkpointing):
    """ "no-grad forward": each call's discarded forward through the compiled-graph path
    (samplers/recompute.py), with the eager UNet standing in for the compiled one."""
    module.sampler.gradient_checkpointing = checkpointing != "none"
    module.pipeline.checkpoint_decode = checkpointing != "none"
    stand_in = stand_in_for_compiled(module) if checkpointing == "no-grad forward" else None
    try:
        ours = training_step_grad(module, Draft())
    finally:
        module.sampler.gradient_checkpointing = True
        module.pipeline.checkpoint_decode = True
        module.sampler.compiled = None
    if stand_in is not None:  # every step's forward went through it, none of the recomputes
        assert stand_in.calls == module.sampling.num_steps

    def loss_fn():
        ref = Reference(module)
        noise, _ = noise_and_generator(module)
        x0 = ref.chain(noise, [0, 1], detach_at=0).prev_sample
        return ref.loss_from_latents(x0, PROMPTS)

    assert_same_gradient(ours, reference_grad(module, loss_fn))


@pytest.mark.parametrize("include_base", [False, True])
def test_draft_lv_matches_reference(module, include_base):
    n = 3
    ours = training_step_grad(module, DraftLV(n=n, include_base_sample=include_base))

    def loss_fn():
        ref = Reference(module)
        noise, generator = noise_and_generator(module)
        rows = [0, 1]
        last = len(ref.timesteps) - 1
        # DRaFT-1 sample; without the base sample no gradient may flow through it at all.
        base = ref.chain(noise, rows, detach_at=last if include_base else last + 1).prev_sample
        if not include_base:
            base = base.detach()
        eps = generator.randn(n * len(PROMPTS), module.pipeline.latent_shape)
        abar = ref.scheduler.alphas_cumprod[ref.timesteps[last]]
        latents = [base] if include_base else []
        for i in range(n):
            e = eps[i * len(PROMPTS) : (i + 1) * len(PROMPTS)]
            x1 = abar.sqrt() * base.detach() + (1 - abar).sqrt() * e  # forward process
            latents.append(ref.step(x1, last, rows).prev_sample)  # one differentiable step
        images_latents = torch.cat(latents)
        return ref.loss_from_latents(images_latents, PROMPTS * len(latents))

    assert_same_gradient(ours, reference_grad(module, loss_fn))


def test_random_truncation_matches_per_trajectory_reference(module):
    estimator = RandomTruncation(low=1, high=4)
    ours = training_step_grad(module, estimator)

    def loss_fn():
        ref = Reference(module)
        noise, generator = noise_and_generator(module)
        ks = estimator.draw_k(len(PROMPTS), len(ref.timesteps), generator.generator)
        assert len(set(ks.tolist())) > 1, "pick a seed where the two trajectories differ"
        total = 0
        for b, k in enumerate(ks.tolist()):  # each trajectory alone, with its own K
            x0 = ref.chain(noise[b : b + 1], [b], detach_at=len(ref.timesteps) - k).prev_sample
            total = total + ref.loss_from_latents(x0, [PROMPTS[b]])
        return total / len(PROMPTS)

    assert_same_gradient(ours, reference_grad(module, loss_fn))


def test_refl_matches_reference(module):
    estimator = ReFL(window=3)
    ours = training_step_grad(module, estimator)

    def loss_fn():
        ref = Reference(module)
        noise, generator = noise_and_generator(module)
        index = estimator.draw_step(len(ref.timesteps), generator)
        out = ref.chain(noise, [0, 1], detach_at=index, stop=index)
        x = noise if out is None else out.prev_sample
        t = ref.timesteps[index]
        eps = ref.eps(x.detach(), t, [0, 1])
        abar = ref.scheduler.alphas_cumprod[t]
        x0 = (x.detach() - (1 - abar).sqrt() * eps) / abar.sqrt()  # direct x0 prediction
        return ref.loss_from_latents(x0, PROMPTS)

    assert_same_gradient(ours, reference_grad(module, loss_fn))


def test_draft_plus_penalty_matches_reference(module):
    """DRaFT+ (kl_coeff > 0) with DRaFT-K, K = 2: the penalty averages
    ||eps_lora - eps_base||^2 over the differentiated steps, base = adapters disabled."""
    kl_coeff = 50.0
    module.kl_coeff = kl_coeff
    try:
        ours = training_step_grad(module, DraftK(2))
    finally:
        module.kl_coeff = 0.0

    def loss_fn():
        ref = Reference(module)
        noise, _ = noise_and_generator(module)
        rows = [0, 1]
        steps = len(ref.timesteps)
        x = noise
        penalties = []
        for i in range(steps):
            if i == steps - 2:
                x = x.detach()
            t = ref.timesteps[i]
            eps = ref.eps(x, t, rows)
            if i >= steps - 2:
                module.pipeline.denoiser.disable_adapters()
                with torch.no_grad():
                    base = ref.eps(x, t, rows)
                module.pipeline.denoiser.enable_adapters()
                penalties.append(((eps - base) ** 2).mean())
            x = ref.scheduler.step(eps, t, x).prev_sample
        reward_loss = ref.loss_from_latents(x, PROMPTS)
        return reward_loss + kl_coeff * torch.stack(penalties).mean()

    assert_same_gradient(ours, reference_grad(module, loss_fn))
    without_penalty = training_step_grad(module, DraftK(2))
    assert not torch.allclose(ours[1], without_penalty[1], rtol=1e-3), "penalty had no effect"


def test_v_prediction_model_matches_reference(tiny_sd):
    """The same loop on an SD2-style v-prediction model (the scheduler converts v to x0/eps)."""
    torch.manual_seed(0)
    v_module = make_module(pretrained_model="tiny:sd-v")
    assert v_module.sampler.scheduler.config.prediction_type == "v_prediction"
    with torch.no_grad():
        for name, p in v_module.pipeline.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    for estimator, k in ((DraftK(2), 2), (DraftLV(n=2), None)):
        ours = training_step_grad(v_module, estimator)

        def loss_fn(k=k):
            ref = Reference(v_module)
            noise, generator = noise_and_generator(v_module)
            steps = len(ref.timesteps)
            if k is not None:
                x0 = ref.chain(noise, [0, 1], detach_at=steps - k).prev_sample
                return ref.loss_from_latents(x0, PROMPTS)
            base = ref.chain(noise, [0, 1], detach_at=steps).prev_sample.detach()
            eps = generator.randn(2 * len(PROMPTS), v_module.pipeline.latent_shape)
            abar = ref.scheduler.alphas_cumprod[ref.timesteps[-1]]
            copies = [
                ref.step(abar.sqrt() * base + (1 - abar).sqrt() * e, steps - 1, [0, 1]).prev_sample
                for e in eps.chunk(2)
            ]
            return ref.loss_from_latents(torch.cat(copies), PROMPTS * 2)

        assert_same_gradient(ours, reference_grad(v_module, loss_fn))
