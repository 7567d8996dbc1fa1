"""A naive FLUX.1 / SD3 sampler for gradient checks, written apart from draft_lightning's
samplers and families: conditioning from the diffusers pipeline's own encode_prompt, latents
packed with FluxPipeline's own helpers, the schedule set on diffusers' scheduler the way the
pipelines set it, Euler steps written out, separate cond and uncond transformer calls, no
checkpointing, autograd on everywhere."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

PROMPTS = ["a cat", "a watercolour dog"]


def load_diffusers(cls, folder):
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def perturb_lora(module, seed: int = 0) -> None:
    """LoRA B starts at zero (adapter = identity, A's gradient zero): perturb it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.pipeline.denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)


def lora_grads(module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.trainable_parameters()])


def clear_grads(module) -> None:
    for p in module.trainable_parameters():
        p.grad = None


def training_step_grad(module, estimator):
    """The module's loss and LoRA gradient for one training step on PROMPTS."""
    module.estimator = estimator
    clear_grads(module)
    loss = module.training_step({"prompts": PROMPTS}, 0)
    loss.backward()
    return loss.detach(), lora_grads(module)


def reference_grad(module, loss_fn):
    clear_grads(module)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), lora_grads(module)


def assert_same_gradient(ours, ref) -> None:
    loss, g = ours
    ref_loss, g_ref = ref
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert g_ref.abs().max() > 0, "reference gradient is zero: the test would prove nothing"
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4 * float(g_ref.abs().max()))


class FlowReference:
    """The naive chain of a DraftModule's flow-matching model, over its own LoRA transformer."""

    def __init__(self, module, folder) -> None:
        self.m = module
        self.flux = module.pipeline.family.name == "flux"
        pipe = load_diffusers(FluxPipeline if self.flux else StableDiffusion3Pipeline, folder)
        settings = module.sampling
        self.guidance = settings.guidance_scale
        self.factor = pipe.vae_scale_factor
        self.resolution = settings.resolution
        self.side = settings.resolution // self.factor
        with torch.no_grad():
            if self.flux:
                embeds, pooled, _ = pipe.encode_prompt(PROMPTS, prompt_2=None)
                self.cond, self.uncond = (embeds, pooled), None
            else:
                embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                    PROMPTS, None, None, do_classifier_free_guidance=self.guidance > 1
                )
                self.cond = (embeds, pooled)
                self.uncond = (negative, negative_pooled) if self.guidance > 1 else None
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        steps = settings.num_steps
        if self.flux:  # FluxPipeline.__call__'s schedule
            config = self.scheduler.config
            mu = calculate_shift(
                (self.side // 2) ** 2,
                config.base_image_seq_len,
                config.max_image_seq_len,
                config.base_shift,
                config.max_shift,
            )
            self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        else:
            self.scheduler.set_timesteps(steps)
        self.sigmas = self.scheduler.sigmas
        self.timesteps = self.scheduler.timesteps

    def velocity(self, x: torch.Tensor, t: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The guided transformer output at timestep(s) t (sigma * 1000)."""
        transformer = self.m.pipeline.denoiser
        batch = len(rows)
        t = torch.as_tensor(t, dtype=torch.float32).expand(batch)
        if self.flux:
            embeds, pooled = self.cond
            rows_per_token = self.side // 2
            out = transformer(
                hidden_states=FluxPipeline._pack_latents(x, batch, 16, self.side, self.side),
                timestep=t / 1000,
                guidance=torch.full((batch,), self.guidance),
                pooled_projections=pooled[rows],
                encoder_hidden_states=embeds[rows],
                txt_ids=torch.zeros(embeds.shape[1], 3),
                img_ids=FluxPipeline._prepare_latent_image_ids(
                    batch, rows_per_token, rows_per_token, "cpu", torch.float32
                ),
            ).sample
            return FluxPipeline._unpack_latents(out, self.resolution, self.resolution, self.factor)

        def call(embeds, pooled):
            return transformer(
                hidden_states=x,
                timestep=t,
                encoder_hidden_states=embeds[rows],
                pooled_projections=pooled[rows],
            ).sample

        v_cond = call(*self.cond)
        if self.uncond is None:
            return v_cond
        v_uncond = call(*self.uncond)
        return v_uncond + self.guidance * (v_cond - v_uncond)

    def step(self, x: torch.Tensor, i: int, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler step i: (next latent, velocity)."""
        v = self.velocity(x, self.timesteps[i], rows)
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * v, v

    def chain(self, x, rows, detach_at, stop=None) -> torch.Tensor:
        """Steps [0, stop) with autograd on; the latent entering step `detach_at` detached."""
        stop = len(self.timesteps) if stop is None else stop
        for i in range(stop):
            if i == detach_at:
                x = x.detach()
            x, _ = self.step(x, i, rows)
        return x

    def loss(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        vae = self.m.pipeline.vae
        raw = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
        images = (raw / 2 + 0.5).clamp(0, 1)
        return -self.m.reward(images, prompts).mean()


def weightless_copy(folder, destination):
    """The model folder with its configs and tokenizers but no weight file: loading it fails,
    so a refusal from it proves the check ran before any weights loaded."""
    import shutil

    copy = shutil.copytree(folder, destination)
    for path in [*copy.rglob("*.safetensors"), *copy.rglob("*.bin")]:
        path.unlink()
    return copy


def assert_exported_adapter_loads(module, pipe, folder, run_transformer, run_pipeline) -> None:
    """`pipe.load_lora_weights(folder)` loads the module's export as is: diffusers' keys only
    (no peft `base_model.model` or `.default`), the trained transformer's outputs exactly (so
    alpha/rank travelled in the metadata), and different pictures than without it."""
    from safetensors import safe_open

    from draft_lightning.models.lora import LORA_WEIGHTS_NAME

    with safe_open(str(folder / LORA_WEIGHTS_NAME), "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(key.startswith("transformer.") for key in keys), keys[:3]
    assert not [key for key in keys if "base_model.model" in key or ".default" in key]
    before = run_pipeline(pipe)
    pipe.load_lora_weights(folder)
    with torch.no_grad():
        ours = run_transformer(module.pipeline.denoiser)
        theirs = run_transformer(pipe.transformer)
        pipe.transformer.disable_lora()
        base = run_transformer(pipe.transformer)
        pipe.transformer.enable_lora()
    assert not torch.allclose(base, ours, atol=1e-4), "the adapter changes nothing: no proof"
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    after = run_pipeline(pipe)
    assert (after - before).abs().max() > 1e-3, "the loaded LoRA does not change the pictures"
    # Our own importer (model.adapters, for generation and mixing) reads it back whole too.
    module.pipeline.load_lora(folder, adapter_name="reloaded")
    module.pipeline.denoiser.delete_adapters("reloaded")
