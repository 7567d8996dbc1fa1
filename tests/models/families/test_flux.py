"""FLUX.1 (models/families/flux.py) on the tiny FLUX.1-dev and -schnell stand-ins: the family
comes from model_index.json, latents pack and prompts encode exactly as FluxPipeline does,
sampling with our sampler reproduces FluxPipeline's latents and images, bad settings are refused
before any weights load, and the exported adapter loads into FluxPipeline as is."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module
from diffusers import FluxPipeline
from flow_reference import (
    assert_exported_adapter_loads,
    load_diffusers,
    perturb_lora,
    weightless_copy,
)

from draft_lightning.errors import ConfigError
from draft_lightning.models.families import family_of
from draft_lightning.models.families.flux import (
    FluxFamily,
    FluxPromptEncoder,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from draft_lightning.models.lora import LoraSettings
from draft_lightning.samplers.settings import SamplingSettings
from draft_lightning.testing.tiny_flux import tiny_flux_path, tiny_flux_schnell_path

PROMPTS = ["a misty mountain valley at sunrise", "a blue square in the middle of a white"]
SEEDS = [3, 7]


@pytest.fixture(scope="module")
def flux_dev() -> FluxPipeline:
    return load_diffusers(FluxPipeline, tiny_flux_path())


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual, expected), (actual - expected).abs().max()


@pytest.mark.parametrize(("height", "width"), [(4, 4), (4, 8), (6, 2)])
def test_packing_matches_flux_pipeline_and_round_trips(height: int, width: int) -> None:
    latents = torch.randn(2, 16, height, width, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(latents)
    assert packed.shape == (2, height // 2 * width // 2, 64)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, height, width))
    assert torch.equal(unpack_latents(packed, height, width), latents)
    # The pipeline unpacks from pixel sizes through its VAE factor (2 for the tiny model).
    expected = FluxPipeline._unpack_latents(packed, 2 * height, 2 * width, vae_scale_factor=2)
    assert torch.equal(unpack_latents(packed, height, width), expected)
    ids = latent_image_ids(height, width, dtype=torch.float32)
    reference = FluxPipeline._prepare_latent_image_ids(
        2, height // 2, width // 2, "cpu", torch.float32
    )
    assert torch.equal(ids, reference)
    # Token k is patch (row, col) = divmod(k, cols), and carries exactly that id.
    k = packed.shape[1] - 1
    row, col = divmod(k, width // 2)
    assert ids[k].tolist() == [0.0, row, col]
    patch = latents[0, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2]
    assert torch.equal(packed[0, k], patch.reshape(-1))
    with pytest.raises(ValueError, match="even height and width, got 5x4"):
        pack_latents(torch.zeros(1, 16, 5, 4))


@pytest.mark.parametrize("max_sequence_length", [512, 77])
def test_dev_encoder_equals_encode_prompt(flux_dev, max_sequence_length: int) -> None:
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
    with pytest.raises(ValueError, match="max_sequence_length=600"):
        FluxPromptEncoder.from_pipeline(flux_dev, max_sequence_length=600)


def test_schnell_encoder_has_no_guidance_input() -> None:
    pipe = load_diffusers(FluxPipeline, tiny_flux_schnell_path())
    conditioning = FluxPromptEncoder.from_pipeline(pipe).condition(PROMPTS, guidance_scale=0.0)
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(PROMPTS)
    assert set(conditioning.cond) == {"encoder_hidden_states", "pooled_projections"}
    assert_equal(conditioning.cond["encoder_hidden_states"], embeds)
    assert_equal(conditioning.cond["pooled_projections"], pooled)
    assert conditioning.uncond is None


@pytest.mark.parametrize(("name", "guidance"), [("tiny:flux", 3.5), ("tiny:flux-schnell", 0.0)])
def test_no_grad_sampling_reproduces_flux_pipeline(name: str, guidance: float) -> None:
    module = make_module(
        pretrained_model=name,
        sampling=SamplingSettings(num_steps=3, guidance_scale=guidance, resolution=32),
    )
    assert isinstance(module.pipeline.family, FluxFamily)
    noise = module.pipeline.seeded_noise(SEEDS)
    with torch.no_grad():
        text = module.pipeline.condition(PROMPTS)
        ours = module.sampler.sample(noise, text, grad_from=module.sampler.num_steps).latents
    folder = tiny_flux_path() if name == "tiny:flux" else tiny_flux_schnell_path()
    assert isinstance(family_of(folder), FluxFamily)
    pipe = load_diffusers(FluxPipeline, folder)
    call = dict(height=32, width=32, num_inference_steps=3, guidance_scale=guidance)
    theirs = pipe(PROMPTS, latents=pack_latents(noise), output_type="latent", **call).images
    torch.testing.assert_close(pack_latents(ours), theirs, rtol=0, atol=1e-5)
    assert (ours - noise).abs().max() > 0.1  # the sampler moved the latents
    if name == "tiny:flux":  # and decodes to the pipeline's pictures
        images = pipe(PROMPTS, latents=pack_latents(noise), output_type="pt", **call).images
        torch.testing.assert_close(module.generate(PROMPTS, SEEDS), images, rtol=0, atol=1e-5)


def test_bad_settings_are_refused_before_weights_load(tmp_path) -> None:
    schnell = weightless_copy(tiny_flux_schnell_path(), tmp_path / "schnell")
    with pytest.raises(ConfigError, match="guidance_scale=3.5: .* takes no guidance"):
        make_module(
            pretrained_model=str(schnell),
            sampling=SamplingSettings(num_steps=2, guidance_scale=3.5, resolution=32),
        )
    dev = weightless_copy(tiny_flux_path(), tmp_path / "dev")
    with pytest.raises(ConfigError, match=r"resolution=34 is not divisible by 4 \(the VAE's"):
        make_module(
            pretrained_model=str(dev),
            sampling=SamplingSettings(num_steps=2, guidance_scale=3.5, resolution=34),
        )


def test_the_default_adapter_covers_both_block_kinds_and_exports_for_flux_pipeline(
    tmp_path,
) -> None:
    module = make_module(
        pretrained_model="tiny:flux",
        sampling=SamplingSettings(num_steps=2, guidance_scale=3.5, resolution=32),
        lora=LoraSettings(rank=4, alpha=13.0),
    )
    adapted = {
        name.rsplit(".lora_A", 1)[0]
        for name, _ in module.pipeline.denoiser.named_parameters()
        if ".lora_A" in name
    }
    for name in (
        "transformer_blocks.0.attn.add_q_proj",
        "transformer_blocks.0.attn.to_add_out",
        "transformer_blocks.0.ff_context.net.2",
        "single_transformer_blocks.0.attn.to_q",
    ):
        assert name in adapted, sorted(adapted)
    perturb_lora(module)
    folder = module.pipeline.save_lora(tmp_path / "lora")
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 64, 64, generator=g),
        encoder_hidden_states=torch.randn(1, 8, 64, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]),
        txt_ids=torch.zeros(8, 3),
        img_ids=latent_image_ids(16, 16),
    )

    def run_pipeline(pipe):
        noise = pack_latents(torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(5)))
        return pipe(
            "a cat", height=32, width=32, num_inference_steps=2, latents=noise, output_type="pt"
        ).images

    assert_exported_adapter_loads(
        module,
        load_diffusers(FluxPipeline, tiny_flux_path()),
        folder,
        lambda transformer: transformer(**inputs).sample,
        run_pipeline,
    )
