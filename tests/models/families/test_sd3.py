"""SD3/SD3.5 (models/families/sd3.py) on the tiny SD3.5-Medium stand-in: prompts encode
exactly as StableDiffusion3Pipeline's encode_prompt, sampling with our sampler reproduces the
pipeline's latents with and without guidance, SD3.5-M's attn2 gets an adapter by default, bad
settings are refused before any weights load, and the exported adapter loads into
StableDiffusion3Pipeline as is."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module
from diffusers import StableDiffusion3Pipeline
from flow_reference import (
    assert_exported_adapter_loads,
    load_diffusers,
    perturb_lora,
    weightless_copy,
)

from draft_lightning.errors import ConfigError
from draft_lightning.models.families.sd3 import SD3Family, SD3PromptEncoder
from draft_lightning.models.lora import LoraSettings
from draft_lightning.samplers.settings import SamplingSettings
from draft_lightning.testing.tiny_sd3 import tiny_sd3_path

PROMPTS = ["a misty mountain valley at sunrise", "a blue square in the middle of a white"]
SEEDS = [3, 7]


@pytest.fixture(scope="module")
def sd3() -> StableDiffusion3Pipeline:
    return load_diffusers(StableDiffusion3Pipeline, tiny_sd3_path())


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual, expected), (actual - expected).abs().max()


def test_encoder_equals_encode_prompt_with_guidance(sd3) -> None:
    encoder = SD3PromptEncoder.from_pipeline(sd3)
    conditioning = encoder.condition(PROMPTS, guidance_scale=5.0)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = sd3.encode_prompt(
            PROMPTS, None, None, do_classifier_free_guidance=True
        )
    assert embeds.shape == (2, 77 + 256, sd3.text_encoder_3.config.d_model)
    assert_equal(conditioning.cond["encoder_hidden_states"], embeds)
    assert_equal(conditioning.cond["pooled_projections"], pooled)
    assert_equal(conditioning.uncond["encoder_hidden_states"], negative)
    assert_equal(conditioning.uncond["pooled_projections"], negative_pooled)
    # The CLIP part is zero-padded from the two CLIP widths up to T5's.
    clip_width = sd3.text_encoder.config.hidden_size + sd3.text_encoder_2.config.hidden_size
    assert (embeds[:, :77, clip_width:] == 0).all() and embeds[:, :77, :clip_width].any()
    # The unconditional input is the empty prompt's, computed once per batch size.
    calls = []
    original = encoder.embed
    encoder.embed = lambda prompts: calls.append(list(prompts)) or original(prompts)
    again = encoder.condition(PROMPTS[::-1], guidance_scale=7.0)
    assert calls == [PROMPTS[::-1]]
    assert_equal(again.uncond["encoder_hidden_states"], negative)
    assert SD3PromptEncoder.from_pipeline(sd3).condition(PROMPTS, 1.0).uncond is None


def test_encoder_without_t5_equals_the_pipeline_without_t5() -> None:
    pipe = StableDiffusion3Pipeline.from_pretrained(
        tiny_sd3_path(), text_encoder_3=None, tokenizer_3=None
    )
    conditioning = SD3PromptEncoder.from_pipeline(pipe, max_sequence_length=32).condition(
        PROMPTS, 5.0
    )
    with torch.no_grad():
        embeds, negative, pooled, _ = pipe.encode_prompt(
            PROMPTS, None, None, max_sequence_length=32
        )
    assert embeds.shape == (2, 77 + 32, pipe.transformer.config.joint_attention_dim)
    assert (embeds[:, 77:] == 0).all()
    assert_equal(conditioning.cond["encoder_hidden_states"], embeds)
    assert_equal(conditioning.cond["pooled_projections"], pooled)
    assert_equal(conditioning.uncond["encoder_hidden_states"], negative)
    with pytest.raises(ValueError, match="together"):
        SD3PromptEncoder(
            pipe.tokenizer,
            pipe.text_encoder,
            pipe.tokenizer_2,
            pipe.text_encoder_2,
            pipe.tokenizer,
            None,
        )
    with pytest.raises(ValueError, match="joint_attention_dim"):
        SD3PromptEncoder(pipe.tokenizer, pipe.text_encoder, pipe.tokenizer_2, pipe.text_encoder_2)


def test_decode_undoes_the_shift_and_scale_as_the_pipeline_does(sd3) -> None:
    latents = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    # One step from sigma 1 to 0 makes the sample the model's x0 guess: a latent to decode.
    call = dict(prompt="a cat", height=32, width=32, num_inference_steps=1, guidance_scale=1.0)
    final = sd3(latents=latents, output_type="latent", **call).images
    image = sd3(latents=latents, output_type="pt", **call).images
    with torch.no_grad():
        ours = SD3Family().decode(sd3.vae, final)
        unshifted = sd3.vae.decode(final / sd3.vae.config.scaling_factor).sample
    torch.testing.assert_close(ours, image, rtol=0, atol=1e-6)
    # The shift matters: leaving it out gives a visibly different image.
    assert ((unshifted / 2 + 0.5).clamp(0, 1) - image).abs().max() > 1e-3


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_no_grad_sampling_reproduces_the_sd3_pipeline(sd3, guidance: float) -> None:
    module = make_module(
        pretrained_model="tiny:sd3",
        sampling=SamplingSettings(num_steps=3, guidance_scale=guidance, resolution=32),
    )
    assert isinstance(module.pipeline.family, SD3Family)
    noise = module.pipeline.seeded_noise(SEEDS)
    with torch.no_grad():
        text = module.pipeline.condition(PROMPTS)
        ours = module.sampler.sample(noise, text, grad_from=module.sampler.num_steps).latents
    assert (text.uncond is not None) == (guidance > 1)
    theirs = sd3(
        PROMPTS,
        height=32,
        width=32,
        num_inference_steps=3,
        guidance_scale=guidance,
        latents=noise,
        output_type="latent",
    ).images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert (ours - noise).abs().max() > 0.1


def test_sd35_medium_attn2_is_adapted_by_default(tmp_path) -> None:
    family = SD3Family()
    configs = family.read_configs(tiny_sd3_path())
    assert configs["denoiser"]["dual_attention_layers"] == [0]
    assert "attn2.to_q" in family.default_lora_targets(configs)
    without = {**configs, "denoiser": {**configs["denoiser"], "dual_attention_layers": []}}
    assert family.default_lora_targets(without) == family.lora_targets  # SD3, SD3.5-Large
    assert not any("attn2" in target for target in family.lora_targets)  # diffusers' list


def test_bad_settings_are_refused_before_weights_load(tmp_path) -> None:
    folder = weightless_copy(tiny_sd3_path(), tmp_path / "sd3")
    with pytest.raises(ConfigError, match=r"resolution=256 is larger than .* \(128 px\)"):
        make_module(
            pretrained_model=str(folder),
            sampling=SamplingSettings(num_steps=2, guidance_scale=3.0, resolution=256),
        )
    with pytest.raises(ConfigError, match="resolution=30 is not divisible by 4"):
        make_module(
            pretrained_model=str(folder),
            sampling=SamplingSettings(num_steps=2, guidance_scale=3.0, resolution=30),
        )


def test_exported_adapter_loads_into_the_sd3_pipeline(sd3, tmp_path) -> None:
    module = make_module(
        pretrained_model="tiny:sd3",
        sampling=SamplingSettings(num_steps=2, guidance_scale=3.0, resolution=32),
        lora=LoraSettings(rank=4, alpha=13.0),
    )
    names = [name for name, _ in module.pipeline.denoiser.named_parameters()]
    assert any("transformer_blocks.0.attn2.to_q.lora_A" in name for name in names)
    perturb_lora(module)
    folder = module.pipeline.save_lora(tmp_path / "lora")
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 16, 16, generator=g),
        encoder_hidden_states=torch.randn(1, 12, 64, generator=g),
        pooled_projections=torch.randn(1, 48, generator=g),
        timestep=torch.tensor([500.0]),
    )

    def run_pipeline(pipe):
        noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
        return pipe(
            "a cat", height=32, width=32, num_inference_steps=2, latents=noise, output_type="pt"
        ).images

    assert_exported_adapter_loads(
        module,
        load_diffusers(StableDiffusion3Pipeline, tiny_sd3_path()),
        folder,
        lambda transformer: transformer(**inputs).sample,
        run_pipeline,
    )
