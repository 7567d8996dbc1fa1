"""FLUX's packed latent layout and both families' decode agree with diffusers' pipelines."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from draft_lightning.models.families.flow_vae import decode_flow_latents
from draft_lightning.models.families.flux_latents import (
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from draft_lightning.testing.tiny_flux import tiny_flux_path
from draft_lightning.testing.tiny_sd3 import tiny_sd3_path


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


def test_packing_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError, match="even height and width, got 5x4"):
        pack_latents(torch.zeros(1, 16, 5, 4))


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_decode_equals_the_pipelines_image(kind: str) -> None:
    cls, folder = {
        "flux": (FluxPipeline, tiny_flux_path),
        "sd3": (StableDiffusion3Pipeline, tiny_sd3_path),
    }[kind]
    pipe = cls.from_pretrained(folder())
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    given = pack_latents(latents) if kind == "flux" else latents
    # One step from sigma 1 to 0 makes the sample the model's x0 guess: a latent to decode.
    kwargs = {"guidance_scale": 1.0} if kind == "sd3" else {}
    call = dict(prompt="a cat", height=32, width=32, num_inference_steps=1, **kwargs)
    final = pipe(latents=given, output_type="latent", **call).images
    image = pipe(latents=given, output_type="pt", **call).images
    if kind == "flux":
        final = unpack_latents(final, 16, 16)
    with torch.no_grad():
        decoded = decode_flow_latents(pipe.vae, final)
        unshifted = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
    ours = pipe.image_processor.postprocess(decoded, output_type="pt")
    torch.testing.assert_close(ours, image, rtol=0, atol=1e-6)
    # The shift matters: leaving it out gives a visibly different image.
    wrong = pipe.image_processor.postprocess(unshifted, output_type="pt")
    assert (wrong - image).abs().max() > 1e-3
