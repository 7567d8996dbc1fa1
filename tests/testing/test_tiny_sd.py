"""The tiny offline SD checkpoint must load through the real from_pretrained path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from draft_lightning.testing import clip_tokenizer
from draft_lightning.testing import tiny_sd as tiny

PROMPTS = ["a photo of a cat", "an astronaut riding a horse, 4k"]
PARTS = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading must never need the hub."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny_sd(tmp_path_factory.mktemp("tiny") / "sd", seed=0)


def _unet_input(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    latents = torch.randn(batch, 4, 16, 16, generator=g)
    timesteps = torch.tensor([10, 500][:batch])
    context = torch.randn(batch, 77, 32, generator=g)
    return latents, timesteps, context


def _is_complete(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() and all((folder / p).is_dir() for p in PARTS)


def test_layout_matches_real_checkpoint(sd_folder: Path) -> None:
    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert index["safety_checker"] == [None, None]
    assert sorted(p.name for p in (sd_folder / "tokenizer").iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]


def test_parts_load_with_real_classes(sd_folder: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(sd_folder, subfolder="text_encoder")
    assert unet.config.sample_size == 16
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size == 32
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    n_params = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    assert 2_000_000 < n_params < 4_000_000


def test_reloaded_unet_and_text_encoder_are_bit_identical(sd_folder: Path) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    built = tiny.build_components(seed=0)
    loaded_unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    loaded_text = CLIPTextModel.from_pretrained(sd_folder, subfolder="text_encoder")
    latents, t, context = _unet_input()
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
    with torch.no_grad():
        assert torch.equal(
            built["unet"](latents, t, context).sample, loaded_unet(latents, t, context).sample
        )
        assert torch.equal(
            built["text_encoder"](ids).last_hidden_state, loaded_text(ids).last_hidden_state
        )
    # The seed matters: another seed gives other weights.
    other = tiny.build_components(seed=1)["unet"]
    assert not torch.equal(other.conv_in.weight, loaded_unet.conv_in.weight)


def test_build_leaves_global_rng_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    tiny.build_components(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_unet_output_nonzero_and_vae_shapes(sd_folder: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae")
    latents, t, context = _unet_input(batch=2)
    with torch.no_grad():
        out = unet(latents, t, context).sample
        image = vae.decode(torch.randn(1, 4, 16, 16)).sample
    assert out.shape == (2, 4, 16, 16)
    assert out.abs().max() > 1e-4
    assert torch.isfinite(out).all()
    assert image.shape == (1, 3, 32, 32)


def test_full_pipeline_loads_and_samples(sd_folder: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 2
    images = pipe(
        PROMPTS[0],
        height=32,
        width=32,
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 3, 32, 32)
    assert torch.isfinite(images).all()


def test_tokenizer_matches_open_clip(sd_folder: Path) -> None:
    import open_clip
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(sd_folder, subfolder="tokenizer")
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    merges = (sd_folder / "tokenizer" / "merges.txt").read_text().splitlines()
    assert merges[0] == "#version: 0.2"
    assert len(merges) - 1 == 48894

    hf_ids = tok(PROMPTS, padding="max_length", max_length=77).input_ids
    oc_ids = open_clip.tokenize(PROMPTS).tolist()
    for hf, oc in zip(hf_ids, oc_ids, strict=True):
        assert len(hf) == 77
        end = hf.index(tok.eos_token_id) + 1
        assert hf[:end] == oc[:end]
        assert tok.unk_token_id not in hf[1 : end - 1]
        assert set(hf[end:]) == {tok.eos_token_id}  # HF pads with eos, open_clip with 0
    # SD 1.x's well-known ids for this prompt.
    assert hf_ids[0][:7] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_byte_mapping_is_gpt2_style() -> None:
    mapping = clip_tokenizer.bytes_to_unicode()
    assert len(mapping) == len(set(mapping.values())) == 256
    assert list(mapping)[:3] == [ord("!"), ord('"'), ord("#")]
    assert mapping[ord("a")] == "a"
    assert mapping[ord(" ")] == "Ġ"


def test_scheduler_config(sd_folder: Path, tmp_path: Path) -> None:
    from diffusers import DDIMScheduler

    s = DDIMScheduler.from_pretrained(sd_folder, subfolder="scheduler")
    assert s.config.num_train_timesteps == 1000
    assert s.config.beta_start == pytest.approx(0.00085)
    assert s.config.beta_end == pytest.approx(0.012)
    assert s.config.beta_schedule == "scaled_linear"
    assert s.config.set_alpha_to_one is False
    assert s.config.steps_offset == 1
    assert s.config.clip_sample is False  # DDIM's own default is True
    assert s.config.prediction_type == "epsilon"
    raw = json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "PNDMScheduler"
    assert raw["skip_prk_steps"] is True

    v_folder = tiny.build_tiny_sd(tmp_path / "v", prediction_type="v_prediction")
    v = DDIMScheduler.from_pretrained(v_folder, subfolder="scheduler")
    assert v.config.prediction_type == "v_prediction"


def test_bad_prediction_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prediction_type"):
        tiny.build_tiny_sd(tmp_path / "x", prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type"):
        tiny.tiny_sd_path(tmp_path, prediction_type="sample")


def test_tiny_sd_path_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_build = tiny.build_tiny_sd

    def counting_build(folder, **kwargs):
        calls.append(kwargs)
        return real_build(folder, **kwargs)

    monkeypatch.setattr(tiny, "build_tiny_sd", counting_build)
    monkeypatch.setenv("DRAFT_LIGHTNING_CACHE", str(tmp_path))
    first = tiny.tiny_sd_path()
    second = tiny.tiny_sd_path()
    assert first == second == tmp_path / f"tiny-sd1-v{tiny.FORMAT_VERSION}"
    assert len(calls) == 1
    assert _is_complete(first)
    assert os.listdir(tmp_path) == [f"tiny-sd1-v{tiny.FORMAT_VERSION}"]
    assert tiny.tiny_sd_path(tmp_path / "elsewhere").parent == tmp_path / "elsewhere"
    assert len(calls) == 2


def test_tiny_sd_path_lost_race(
    tmp_path: Path, sd_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process publishes first: we keep theirs and leave no temp folder."""
    real_rename = os.rename
    target = tmp_path / f"tiny-sd2v-v{tiny.FORMAT_VERSION}"

    def rename_after_rival(src, dst):
        shutil.copytree(sd_folder, dst)  # the rival's complete folder appears first
        (Path(dst) / "rival").touch()
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_after_rival)
    result = tiny.tiny_sd_path(tmp_path, prediction_type="v_prediction")
    assert result == target
    assert (target / "rival").exists()
    assert _is_complete(target)
    assert os.listdir(tmp_path) == [target.name]


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(folder, **kwargs):
        (Path(folder) / "model_index.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "build_tiny_sd", broken_build)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny.tiny_sd_path(tmp_path)
    assert os.listdir(tmp_path) == []
