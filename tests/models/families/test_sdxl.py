"""SDXL through the same sampler, estimators and export as SD 1.x, on the tiny SDXL model:
no-grad sampling equals diffusers' StableDiffusionXLPipeline, each estimator's LoRA gradient
equals a naive unrolled reference whose conditioning comes from the pipeline's own
encode_prompt, and the exported adapter loads into the pipeline unchanged."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_module
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from draft_lightning.errors import ConfigError
from draft_lightning.estimators import DraftK, DraftLV
from draft_lightning.models.families import family_of
from draft_lightning.models.families.sdxl import SDXLConditioning, SDXLFamily
from draft_lightning.models.loading import resolve_pretrained
from draft_lightning.models.lora import save_lora
from draft_lightning.samplers.settings import SamplingSettings

PROMPTS = ["a cat", "an astronaut riding a horse"]
SEEDS = [3, 7]


@pytest.fixture(scope="module")
def tiny_sdxl():
    return resolve_pretrained("tiny:sdxl")


def load_pipeline(folder) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded_noise(module) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    return torch.stack([torch.randn(module.pipeline.latent_shape, generator=g) for g in generators])


def perturb_lora(module) -> None:
    """LoRA B starts at zero (adapter = identity, A's gradient zero): perturb it."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.pipeline.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def test_tiny_sdxl_has_the_layout_of_sdxl_base(tiny_sdxl):
    index = json.loads((tiny_sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["tokenizer_2"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    assert index["force_zeros_for_empty_prompt"] is True
    unet = json.loads((tiny_sdxl / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time"
    assert unet["cross_attention_dim"] == 64  # two 32-wide text encoders side by side
    vae = json.loads((tiny_sdxl / "vae" / "config.json").read_text())
    assert vae["force_upcast"] is True and vae["scaling_factor"] == pytest.approx(0.13025)


def test_the_family_is_read_from_the_checkpoint(tiny_sdxl, tiny_sd):
    assert isinstance(family_of(tiny_sdxl), SDXLFamily)
    assert type(family_of(tiny_sd)).__name__ == "StableDiffusionFamily"
    module = make_module(pretrained_model="tiny:sdxl")
    assert module.pipeline.family.pipeline_class == "StableDiffusionXLPipeline"
    assert module.pipeline.prompt_encoder.tokenizers[1].pad_token == "!"  # SDXL's second tokenizer


@pytest.mark.parametrize(
    ("guidance", "conditioning", "force_zeros"),
    [
        (1.0, SDXLConditioning(), True),
        (4.0, SDXLConditioning(), True),
        (4.0, SDXLConditioning(), False),
        (4.0, SDXLConditioning(original_size=(64, 48), crops_coords_top_left=(4, 8)), True),
    ],
)
def test_no_grad_sampling_reproduces_the_sdxl_pipeline(
    tiny_sdxl, tmp_path, guidance, conditioning, force_zeros
):
    folder = tiny_sdxl
    if not force_zeros:  # encode the empty prompt instead of zeros, as the pipeline then does
        folder = tmp_path / "sdxl"
        shutil.copytree(tiny_sdxl, folder)
        index = json.loads((folder / "model_index.json").read_text())
        index["force_zeros_for_empty_prompt"] = False
        (folder / "model_index.json").write_text(json.dumps(index))
    module = make_module(
        pretrained_model=str(folder),
        sampling=SamplingSettings(num_steps=5, guidance_scale=guidance, resolution=32),
        sdxl_conditioning=conditioning,
    )
    ours = module.generate(PROMPTS, SEEDS)

    pipe = load_pipeline(folder)
    assert pipe.config.force_zeros_for_empty_prompt == force_zeros
    theirs = pipe(
        PROMPTS,
        height=32,
        width=32,
        num_inference_steps=5,
        guidance_scale=guidance,
        latents=seeded_noise(module),
        original_size=conditioning.original_size,
        crops_coords_top_left=conditioning.crops_coords_top_left,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_micro_conditioning_changes_the_sample(tiny_sdxl):
    settings = SamplingSettings(num_steps=3, guidance_scale=3.0, resolution=32)
    plain = make_module(pretrained_model="tiny:sdxl", sampling=settings)
    cropped = make_module(
        pretrained_model="tiny:sdxl",
        sampling=settings,
        sdxl_conditioning=SDXLConditioning(crops_coords_top_left=(16, 16)),
    )
    a, b = plain.generate(PROMPTS[:1], SEEDS[:1]), cropped.generate(PROMPTS[:1], SEEDS[:1])
    assert not torch.allclose(a, b, atol=1e-5)


class XLReference:
    """A naive SDXL sampler: conditioning from diffusers' own encode_prompt and
    _get_add_time_ids, separate cond/uncond UNet calls, plain autograd, no checkpointing."""

    def __init__(self, module, folder):
        self.m = module
        pipe = load_pipeline(folder)
        with torch.no_grad():
            cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
                PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
            )
        size = (module.sampling.resolution,) * 2
        time_ids = pipe._get_add_time_ids(
            size,
            (0, 0),
            size,
            dtype=cond.dtype,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
        ).expand(len(PROMPTS), -1)
        self.cond = (cond, {"text_embeds": pooled, "time_ids": time_ids})
        self.uncond = (uncond, {"text_embeds": uncond_pooled, "time_ids": time_ids})
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(module.sampling.num_steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]
        self.guidance = module.sampling.guidance_scale

    def eps(self, x, t, rows):
        def call(embeds):
            hidden, added = embeds
            added = {k: v[rows] for k, v in added.items()}
            return self.m.pipeline.denoiser(
                x, t, encoder_hidden_states=hidden[rows], added_cond_kwargs=added
            )

        e_c, e_u = call(self.cond).sample, call(self.uncond).sample
        return e_u + self.guidance * (e_c - e_u)

    def chain(self, x, rows, detach_at):
        for i, t in enumerate(self.timesteps):
            if i == detach_at:
                x = x.detach()
            x = self.scheduler.step(self.eps(x, t, rows), t, x).prev_sample
        return x

    def loss(self, latents, prompts):
        vae = self.m.pipeline.vae
        images = (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        return -self.m.reward(images, prompts).mean()


def grads(module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.trainable_parameters()])


def test_draft_k_and_draft_lv_gradients_match_the_naive_reference(tiny_sdxl):
    module = make_module(pretrained_model="tiny:sdxl")
    perturb_lora(module)
    ref = XLReference(module, tiny_sdxl)
    rows, steps = [0, 1], len(ref.timesteps)
    for estimator, k in ((DraftK(2), 2), (DraftLV(n=2), None)):
        module.estimator = estimator
        for p in module.trainable_parameters():
            p.grad = None
        loss = module.training_step({"prompts": PROMPTS}, 0)
        loss.backward()
        ours = (loss.detach(), grads(module))

        for p in module.trainable_parameters():
            p.grad = None
        rng = module.step_randomness(0)
        noise = rng.randn(len(PROMPTS), module.pipeline.latent_shape)
        if k is not None:
            ref_loss = ref.loss(ref.chain(noise, rows, detach_at=steps - k), PROMPTS)
        else:  # DRaFT-LV: re-noise the detached final sample n times, one step each
            base = ref.chain(noise, rows, detach_at=steps).detach()
            eps = rng.randn(2 * len(PROMPTS), module.pipeline.latent_shape)
            t = ref.timesteps[-1]
            abar = ref.scheduler.alphas_cumprod[t]
            copies = []
            for e in eps.chunk(2):
                x = abar.sqrt() * base + (1 - abar).sqrt() * e
                copies.append(ref.scheduler.step(ref.eps(x, t, rows), t, x).prev_sample)
            ref_loss = ref.loss(torch.cat(copies), PROMPTS * 2)
        ref_loss.backward()
        expected = grads(module)

        torch.testing.assert_close(ours[0], ref_loss.detach(), rtol=1e-5, atol=1e-6)
        assert expected.abs().max() > 0, "reference gradient is zero: the test would prove nothing"
        torch.testing.assert_close(
            ours[1], expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())
        )


def test_exported_adapter_round_trips_through_the_sdxl_pipeline(tiny_sdxl, tmp_path):
    module = make_module(pretrained_model="tiny:sdxl")
    perturb_lora(module)
    folder = save_lora(
        module.pipeline.denoiser,
        tmp_path / "lora",
        pipeline_class=module.pipeline.family.pipeline_class,
    )

    pipe = load_pipeline(tiny_sdxl)
    pipe.load_lora_weights(folder)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    hidden = torch.randn(2, 77, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.rand(2, 6) * 64}
    with torch.no_grad():
        ours = module.pipeline.denoiser(
            x, 500, encoder_hidden_states=hidden, added_cond_kwargs=added
        ).sample
        theirs = pipe.unet(x, 500, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
        pipe.unet.disable_lora()
        base = pipe.unet(x, 500, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
    assert not torch.allclose(base, ours, atol=1e-4), "the adapter changes nothing: no proof"
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)


def test_float16_keeps_the_fp16_unsafe_vae_in_float32(tiny_sdxl):
    half = make_module(pretrained_model="tiny:sdxl", frozen_dtype="float16")
    assert half.pipeline.denoiser.dtype == torch.float16
    assert (
        half.pipeline.vae.dtype == torch.float32
    )  # the tiny SDXL VAE says force_upcast, like SDXL's
    assert make_module(
        pretrained_model="tiny:sdxl", frozen_dtype="bfloat16"
    ).pipeline.vae.dtype == (torch.bfloat16)
    forced = make_module(pretrained_model="tiny:sdxl", frozen_dtype="bfloat16", upcast_vae=True)
    assert forced.pipeline.vae.dtype == torch.float32


def test_a_replacement_vae_is_loaded(tiny_sdxl, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sdxl, subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.25)  # a different VAE, as the fp16 fix is
    vae.save_pretrained(tmp_path / "vae-fix")
    module = make_module(pretrained_model="tiny:sdxl", pretrained_vae=str(tmp_path / "vae-fix"))
    torch.testing.assert_close(module.pipeline.vae.decoder.conv_out.bias, vae.decoder.conv_out.bias)
    with pytest.raises(ConfigError, match="pretrained_vae='not a vae'"):
        make_module(pretrained_model="tiny:sdxl", pretrained_vae="not a vae")


def test_family_mismatches_are_refused_before_weights_load(tiny_sd, tmp_path):
    with pytest.raises(ConfigError, match="sdxl_conditioning is set but the model is not SDXL"):
        make_module(sdxl_conditioning=SDXLConditioning(original_size=(64, 64)))
    with pytest.raises(ConfigError, match="sdxl_conditioning.target_size"):
        SDXLConditioning(target_size=(64, -1))
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    with pytest.raises(ConfigError, match="QwenImagePipeline, which draft_lightning does not"):
        make_module(pretrained_model=str(folder))
