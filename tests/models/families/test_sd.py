"""The SD 1.x/2.x family on its own (models/families/sd.py), on the tiny model's folder."""

from __future__ import annotations

import json

import pytest
import torch

from draft_lightning.errors import ConfigError
from draft_lightning.models.families import check_options, families, family_of
from draft_lightning.models.families.sd import StableDiffusionFamily
from draft_lightning.models.families.sdxl import SDXLConditioning, SDXLFamily
from draft_lightning.samplers.ddim import DDIMSampler
from draft_lightning.samplers.settings import SamplingSettings


@pytest.fixture(scope="module")
def family_and_parts(tiny_sd):
    family = family_of(tiny_sd)
    encoder = family.load_prompt_encoder(tiny_sd, torch.float32, 32, {})
    unet = family.load_denoiser(tiny_sd, torch.float32)
    vae = family.load_vae(tiny_sd, torch.float32, None)
    return family, encoder, unet, vae


def test_the_family_comes_from_model_index_json(tiny_sd, tmp_path):
    assert isinstance(family_of(tiny_sd), StableDiffusionFamily)
    assert not isinstance(family_of(tiny_sd), SDXLFamily)
    assert {"StableDiffusionPipeline", "StableDiffusionXLPipeline"} <= set(families())
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ConfigError, match="KandinskyPipeline, which draft_lightning does not"):
        family_of(tmp_path)


def test_another_familys_option_is_refused(tiny_sd):
    sd = family_of(tiny_sd)
    check_options(sd, {"sdxl_conditioning": SDXLConditioning()})  # the default: harmless
    with pytest.raises(ConfigError, match="sdxl_conditioning is set but the model is not SDXL"):
        check_options(sd, {"sdxl_conditioning": SDXLConditioning(crops_coords_top_left=(4, 4))})


def test_conditioning_is_the_unets_keyword_inputs_and_the_empty_prompt_is_cached(
    family_and_parts,
):
    family, encoder, unet, _ = family_and_parts
    guided = encoder.condition(["a cat", "a dog"], 3.0)
    assert set(guided.cond) == {"encoder_hidden_states"}
    assert guided.cond["encoder_hidden_states"].shape == (2, 77, 32)
    assert torch.equal(guided.uncond["encoder_hidden_states"][0], encoder.embed([""])[0])
    assert encoder.condition(["a cat"], 1.0).uncond is None
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor(500)
    with torch.no_grad():
        ours = family.predict(unet, x, t, guided.cond)
        direct = unet(x, t, encoder_hidden_states=guided.cond["encoder_hidden_states"]).sample
    assert torch.equal(ours, direct)


def test_decode_undoes_the_vae_scaling_into_images_in_0_1(family_and_parts):
    family, _, _, vae = family_and_parts
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        images = family.decode(vae, latents)
        raw = vae.decode(latents / vae.config.scaling_factor).sample
    assert images.shape == (1, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, (raw / 2 + 0.5).clamp(0, 1))


def test_the_sampler_is_ddim_from_the_checkpoints_scheduler_config(family_and_parts, tiny_sd):
    family, _, unet, _ = family_and_parts
    sampler = family.make_sampler(unet, tiny_sd, SamplingSettings(num_steps=5, resolution=32))
    assert isinstance(sampler, DDIMSampler) and sampler.num_steps == 5
    assert sampler.scheduler.config.beta_schedule == "scaled_linear"
    configs = family.read_configs(tiny_sd)
    assert family.latent_shape(configs, 32) == (4, 16, 16)
    names = {name for name, _ in family.skeleton(configs).named_modules()}
    assert any(name.endswith("attn1.to_q") for name in names)
