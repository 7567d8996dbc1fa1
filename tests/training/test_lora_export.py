"""LoRA export in diffusers and kohya formats, LoRA strength and mixing for generation, and the
predict image writer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_module
from lightning.pytorch import Trainer
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from draft_lightning.data import ValidationPrompts, collate_val
from draft_lightning.errors import ConfigError
from draft_lightning.models.lora import (
    KOHYA_WEIGHTS_NAME,
    LORA_WEIGHTS_NAME,
    LoraSettings,
    save_lora,
)
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
    from safetensors.torch import save_file

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


@pytest.mark.parametrize("model", ["tiny:sd", "tiny:sdxl"])
def test_kohya_file_loads_through_diffusers_kohya_loader_with_the_same_images(
    model, tiny_sd, tmp_path
):
    """Both formats from one adapter with alpha != rank: diffusers' kohya-ss loader reads
    the kohya file (keys lora_unet_*, alpha per module) into the same pictures."""
    from diffusers import DiffusionPipeline

    from draft_lightning.models.loading import resolve_pretrained

    module = make_module(pretrained_model=model, lora=LoraSettings(rank=4, alpha=13.0))
    randomise_lora(module, 0)
    folder = module.pipeline.save_lora(tmp_path / "last", formats=("diffusers", "kohya"))
    kohya = load_file(folder / KOHYA_WEIGHTS_NAME)
    assert all(key.startswith("lora_unet_") for key in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {13.0}

    def images(weight_name: str | None) -> torch.Tensor:
        pipe = DiffusionPipeline.from_pretrained(resolve_pretrained(model))
        pipe.set_progress_bar_config(disable=True)
        if weight_name is not None:
            pipe.load_lora_weights(folder, weight_name=weight_name)
        generator = torch.Generator().manual_seed(0)
        return pipe(["a cat", "a dog"], num_inference_steps=3, height=32, width=32,
                    generator=generator, output_type="pt").images  # fmt: skip

    from_diffusers, from_kohya = images(LORA_WEIGHTS_NAME), images(KOHYA_WEIGHTS_NAME)
    assert not torch.allclose(images(None), from_diffusers, atol=1e-3), "adapter changes nothing"
    torch.testing.assert_close(from_kohya, from_diffusers, rtol=0, atol=1e-6)


def test_kohya_is_refused_for_a_transformer_adapter(trained, tmp_path):
    module, _ = trained
    with pytest.raises(ConfigError, match="kohya is for UNet models"):
        save_lora(module.pipeline.denoiser, tmp_path / "x", component="transformer",
                  formats=("kohya",))  # fmt: skip
    with pytest.raises(ConfigError, match="choose from diffusers, kohya"):
        save_lora(module.pipeline.denoiser, tmp_path / "x", formats=("ckpt",))
    assert not (tmp_path / "x").exists()


def test_delta_weight_norm_is_the_norm_of_every_scaled_lora_product(trained):
    from peft.tuners.lora import LoraLayer

    module, _ = trained
    squares = [
        (layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
        .pow(2)
        .sum()
        for layer in module.pipeline.denoiser.modules()
        if isinstance(layer, LoraLayer)
    ]
    assert len(squares) > 0
    expected = torch.stack(squares).sum().sqrt()
    torch.testing.assert_close(module.pipeline.adapter_norm(), expected, rtol=1e-4, atol=0)
    assert float(make_module().pipeline.adapter_norm()) == 0.0  # B = 0: the base model


def test_each_export_has_its_model_card_and_samples(tiny_sd, tmp_path):
    """A 2-step fit evaluated at steps 0 and 2: both exports hold the two formats, a model
    card whose metadata block the Hub reads, and the latest validation grid."""
    import yaml
    from lightning.pytorch.loggers import CSVLogger
    from PIL import Image

    from draft_lightning.data import PromptDataModule
    from draft_lightning.training.lora_export import LoraExport
    from draft_lightning.training.model_card import hub_base_model

    module = make_module()
    trainer = Trainer(
        accelerator="cpu", max_steps=2, val_check_interval=2, check_val_every_n_epoch=None,
        num_sanity_val_steps=-1, logger=CSVLogger(tmp_path, name="run"),
        callbacks=[LoraExport(formats=["diffusers", "kohya"])], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, PromptDataModule(batch_size=2, num_val_prompts=2, num_val_seeds=2))
    root = tmp_path / "run" / "version_0" / "lora"
    assert sorted(p.name for p in root.iterdir()) == ["last", "step=2"]
    for folder in root.iterdir():
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["README.md", KOHYA_WEIGHTS_NAME, LORA_WEIGHTS_NAME, "samples.png"]
        card = (folder / "README.md").read_text()
        _, front, body = card.split("---\n", 2)
        metadata = yaml.safe_load(front)
        assert metadata["library_name"] == "diffusers"
        assert {"lora", "text-to-image", "stable-diffusion"} <= set(metadata["tags"])
        assert "base_model" not in metadata  # tiny:sd is no Hub id
        assert metadata["widget"][0]["output"]["url"] == "samples.png"
        (base_step, base), (last_step, last) = module.eval_history[0], module.eval_history[-1]
        assert (base_step, last_step) == (0, 2)
        assert f"| base model | 0 | {base['val/reward']:.4f} |" in body
        assert f"| this adapter (latest evaluation) | 2 | {last['val/reward']:.4f} |" in body
        for fact in (
            "tiny:sd",
            "DraftK",
            "colorfulness",
            "after **2** optimiser steps",
            "| estimator.k | 1 |",
            "| lora.rank | 8 |",
            "StableDiffusionPipeline",
        ):
            assert fact in body, fact  # fmt: skip
        assert Image.open(folder / "samples.png").format == "PNG"
    assert hub_base_model("CompVis/stable-diffusion-v1-4") == "CompVis/stable-diffusion-v1-4"
    assert hub_base_model(str(tmp_path)) is None and hub_base_model("tiny:sdxl") is None
