"""LoRA export in diffusers format, LoRA strength and mixing for generation, and the
predict image writer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_module
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from draft_lightning.data import ValidationPrompts, collate_val
from draft_lightning.errors import ConfigError
from draft_lightning.models.lora import LORA_WEIGHTS_NAME, LoraSettings, save_lora
from draft_lightning.training.image_writer import ImageWriter


def randomise_lora(module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


def unet_output(unet, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((2, 4, 16, 16), generator=generator)
    text = torch.randn((2, 77, 32), generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor(500), encoder_hidden_states=text).sample


@pytest.fixture(scope="module")
def trained(tiny_sd, tmp_path_factory):
    """A module with alpha != rank and non-trivial LoRA weights, exported once."""
    module = make_module(lora=LoraSettings(rank=4, alpha=13.0))
    randomise_lora(module, 0)
    folder = save_lora(
        module.pipeline.denoiser, tmp_path_factory.mktemp("export") / "lora" / "last"
    )
    return module, folder


def test_export_round_trip_through_diffusers_pipeline(trained, tiny_sd):
    from diffusers import StableDiffusionPipeline

    module, folder = trained
    assert (folder / LORA_WEIGHTS_NAME).is_file()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    base = unet_output(pipe.unet)
    pipe.load_lora_weights(folder)
    ours = unet_output(module.pipeline.denoiser)
    assert not torch.allclose(base, ours, atol=1e-4), "the adapter must change the output"
    torch.testing.assert_close(unet_output(pipe.unet), ours, rtol=1e-5, atol=1e-5)


def test_exported_metadata_lists_the_targets_in_a_fixed_order(tiny_sd, tmp_path):
    """peft keeps the targets as a set (ordered by PYTHONHASHSEED); the file must not."""
    from safetensors import safe_open

    targets = ("to_v", "proj_in", "to_q", "to_out.0", "proj_out", "to_k")
    module = make_module(lora=LoraSettings(rank=2, target_modules=targets))
    folder = module.pipeline.save_lora(tmp_path / "lora")
    with safe_open(folder / LORA_WEIGHTS_NAME, "pt") as file:
        metadata = json.loads(file.metadata()["lora_adapter_metadata"])
    assert metadata["unet.target_modules"] == sorted(targets)


def test_export_replaces_an_existing_folder_whole(trained, tmp_path):
    module, _ = trained
    target = tmp_path / "last"
    save_lora(module.pipeline.denoiser, target)
    (target / "stale.txt").write_text("from an older export")
    save_lora(module.pipeline.denoiser, target)
    assert sorted(p.name for p in target.iterdir()) == [LORA_WEIGHTS_NAME]
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temp folders left behind


def predict(module, tmp_path, seeds=(0, 1)):
    data = DataLoader(
        ValidationPrompts(["a cat", "a dog"], num_seeds=len(seeds)),
        batch_size=3,
        collate_fn=collate_val,
    )
    writer = ImageWriter(output_dir=str(tmp_path))
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[writer],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    outputs = trainer.predict(module, dataloaders=data)
    return torch.cat([o["images"] for o in outputs]), tmp_path


def test_strength_zero_is_the_base_model_and_manifest_matches_files(trained, tmp_path):
    module, _ = trained
    base_module = make_module()  # the same tiny SD, LoRA B = 0: exactly the base model
    base_images, _ = predict(base_module, tmp_path / "base")
    module.lora_scale = 0.0
    try:
        zero_images, out = predict(module, tmp_path / "zero")
    finally:
        module.lora_scale = 1.0
    assert torch.equal(zero_images, base_images)
    full_images, _ = predict(module, tmp_path / "full")
    assert not torch.equal(full_images, base_images)

    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(line["file"] for line in lines) == pngs and len(pngs) == 4
    assert {(line["prompt"], line["seed"]) for line in lines} == {
        (p, s) for p in ("a cat", "a dog") for s in (0, 1)
    }
    assert all(line["adapters"] == [{"path": "trained", "weight": 0.0}] for line in lines)
    assert all(set(line["rewards"]) == {"colorfulness"} for line in lines)
    assert not list(out.glob("*.partial")) and not list(out.glob(".*tmp*"))


def test_mixing_weights_one_zero_equal_the_first_adapter(trained, tmp_path):
    first, first_folder = trained
    other = make_module(lora=LoraSettings(rank=4, alpha=13.0))
    randomise_lora(other, 1)
    second_folder = save_lora(other.pipeline.denoiser, tmp_path / "second")
    mixed = make_module(adapters=[str(first_folder), str(second_folder)], adapter_weights=[1, 0])
    alone, _ = predict(first, tmp_path / "alone")
    mix, _ = predict(mixed, tmp_path / "mix")
    torch.testing.assert_close(mix, alone, rtol=0, atol=1e-6)
    half = make_module(adapters=[str(first_folder), str(second_folder)], adapter_weights=[1, 1])
    both, _ = predict(half, tmp_path / "both")
    assert not torch.allclose(both, alone, atol=1e-4)


def test_bad_adapters_are_refused_with_one_line(trained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="has no pytorch_lora_weights") as error:
        make_module(adapters=[str(empty)])
    assert "\n" not in str(error.value)
    # An adapter whose targets this UNet does not have: keys renamed to missing modules.
    from safetensors.torch import load_file, save_file

    _, folder = trained
    state = load_file(folder / LORA_WEIGHTS_NAME)
    alien = tmp_path / "alien"
    alien.mkdir()
    save_file({k.replace("attn1", "attnX"): v for k, v in state.items()}, alien / LORA_WEIGHTS_NAME)
    with pytest.raises(ConfigError, match="does not fit this UNet") as error:
        make_module(adapters=[str(alien)])
    assert "\n" not in str(error.value)
    # An adapter made for a wider model: every LoRA A matrix has the wrong input width.
    wide = tmp_path / "wide"
    wide.mkdir()
    widened = {
        k: torch.cat([v, v[:, :1]], dim=1) if ".lora.down." in k else v for k, v in state.items()
    }
    save_file(widened, wide / LORA_WEIGHTS_NAME)
    with pytest.raises(ConfigError, match="does not fit this UNet") as error:
        make_module(adapters=[str(wide)])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="adapter_weights has 2 entries for 1 adapters"):
        make_module(adapters=[str(folder)], adapter_weights=[1.0, 2.0])
