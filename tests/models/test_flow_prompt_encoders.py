"""FLUX and SD3 prompt encoders give exactly what diffusers' pipelines' encode_prompt gives,
in the Conditioning layout the sampler consumes."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from draft_lightning.models.families.flux_text import FluxPromptEncoder
from draft_lightning.models.families.sd3_text import SD3PromptEncoder
from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.testing.tiny_flux import tiny_flux_path, tiny_flux_schnell_path
from draft_lightning.testing.tiny_sd3 import tiny_sd3_path

PROMPTS = ["a misty mountain valley at sunrise", "a blue square in the middle of a white"]


def load(cls, folder, **parts):
    pipe = cls.from_pretrained(folder, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flux_dev() -> FluxPipeline:
    return load(FluxPipeline, tiny_flux_path())


@pytest.fixture(scope="module")
def sd3() -> StableDiffusion3Pipeline:
    return load(StableDiffusion3Pipeline, tiny_sd3_path())


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual, expected), (actual - expected).abs().max()


@pytest.mark.parametrize("max_sequence_length", [512, 77])
def test_flux_dev_encoder_equals_encode_prompt(flux_dev, max_sequence_length: int) -> None:
    conditioning = FluxPromptEncoder.from_pipeline(
        flux_dev, max_sequence_length=max_sequence_length
    ).condition(PROMPTS, guidance_scale=3.5)
    # The pipeline encodes under no_grad (inside __call__); with autograd on, T5's
    # attention takes another kernel and differs in the last bits.
    with torch.no_grad():
        embeds, pooled, _ = flux_dev.encode_prompt(PROMPTS, max_sequence_length=max_sequence_length)
    assert set(conditioning.cond) == {"encoder_hidden_states", "pooled_projections", "guidance"}
    assert embeds.shape == (2, max_sequence_length, flux_dev.text_encoder_2.config.d_model)
    assert_equal(conditioning.cond["encoder_hidden_states"], embeds)
    assert_equal(conditioning.cond["pooled_projections"], pooled)
    assert_equal(conditioning.cond["guidance"], torch.tensor([3.5, 3.5]))
    assert conditioning.uncond is None  # guidance-distilled: no classifier-free guidance
    assert not conditioning.cond["encoder_hidden_states"].requires_grad


def test_flux_schnell_encoder_has_no_guidance_input() -> None:
    pipe = load(FluxPipeline, tiny_flux_schnell_path())
    conditioning = FluxPromptEncoder.from_pipeline(pipe).condition(PROMPTS, guidance_scale=3.5)
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(PROMPTS)
    assert set(conditioning.cond) == {"encoder_hidden_states", "pooled_projections"}
    assert_equal(conditioning.cond["encoder_hidden_states"], embeds)
    assert_equal(conditioning.cond["pooled_projections"], pooled)
    assert conditioning.uncond is None


def test_flux_encoder_rejects_a_too_long_t5_sequence(flux_dev) -> None:
    with pytest.raises(ValueError, match="max_sequence_length=600"):
        FluxPromptEncoder.from_pipeline(flux_dev, max_sequence_length=600)


def test_sd3_encoder_equals_encode_prompt_with_guidance(sd3) -> None:
    encoder = SD3PromptEncoder.from_pipeline(sd3)
    conditioning = encoder.condition(PROMPTS, guidance_scale=5.0)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = sd3.encode_prompt(
            PROMPTS, None, None, do_classifier_free_guidance=True
        )
    t5_width = sd3.text_encoder_3.config.d_model
    assert embeds.shape == (2, 77 + 256, t5_width)
    assert_equal(conditioning.cond["encoder_hidden_states"], embeds)
    assert_equal(conditioning.cond["pooled_projections"], pooled)
    assert_equal(conditioning.uncond["encoder_hidden_states"], negative)
    assert_equal(conditioning.uncond["pooled_projections"], negative_pooled)
    # The CLIP part is zero-padded from the two CLIP widths up to T5's.
    clip_width = sd3.text_encoder.config.hidden_size + sd3.text_encoder_2.config.hidden_size
    assert (embeds[:, :77, clip_width:] == 0).all() and embeds[:, :77, :clip_width].any()
    # The unconditional input is the empty prompt's, computed once per batch size.
    assert not torch.equal(negative[0], embeds[0])
    calls = []
    original = encoder.embed
    encoder.embed = lambda prompts: calls.append(list(prompts)) or original(prompts)
    again = encoder.condition(PROMPTS[::-1], guidance_scale=7.0)
    assert calls == [PROMPTS[::-1]]
    assert_equal(again.uncond["encoder_hidden_states"], negative)


def test_sd3_encoder_without_guidance_has_no_uncond(sd3) -> None:
    conditioning = SD3PromptEncoder.from_pipeline(sd3).condition(PROMPTS, guidance_scale=1.0)
    assert conditioning.uncond is None


def test_sd3_encoder_without_t5_equals_the_pipeline_without_t5() -> None:
    pipe = load(StableDiffusion3Pipeline, tiny_sd3_path(), text_encoder_3=None, tokenizer_3=None)
    conditioning = SD3PromptEncoder.from_pipeline(pipe, max_sequence_length=32).condition(
        PROMPTS, 5.0
    )
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPTS, None, None, max_sequence_length=32
        )
    assert embeds.shape == (2, 77 + 32, pipe.transformer.config.joint_attention_dim)
    assert (embeds[:, 77:] == 0).all()
    assert_equal(conditioning.cond["encoder_hidden_states"], embeds)
    assert_equal(conditioning.cond["pooled_projections"], pooled)
    assert_equal(conditioning.uncond["encoder_hidden_states"], negative)
    assert_equal(conditioning.uncond["pooled_projections"], negative_pooled)


def test_sd3_encoder_rejects_half_a_t5(sd3) -> None:
    with pytest.raises(ValueError, match="together"):
        SD3PromptEncoder(
            sd3.tokenizer,
            sd3.text_encoder,
            sd3.tokenizer_2,
            sd3.text_encoder_2,
            sd3.tokenizer_3,
            None,
        )
    with pytest.raises(ValueError, match="joint_attention_dim"):
        SD3PromptEncoder(sd3.tokenizer, sd3.text_encoder, sd3.tokenizer_2, sd3.text_encoder_2)


def test_conditioning_repeat_is_copy_major() -> None:
    rows = torch.arange(2.0)
    conditioning = Conditioning({"a": rows[:, None], "b": rows}, {"a": -rows[:, None], "b": -rows})
    tripled = conditioning.repeat(3)
    assert tripled.copies == 3
    assert tripled.cond["a"].squeeze(1).tolist() == [0.0, 1.0] * 3
    assert tripled.uncond["b"].tolist() == [-0.0, -1.0] * 3
    assert Conditioning({"a": rows}, None).repeat(2).uncond is None
    assert conditioning.repeat(1) is conditioning
