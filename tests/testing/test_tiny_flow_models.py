"""The tiny FLUX.1 and SD3.5 stand-ins and their T5 tokenizer: built offline, deterministic,
shaped like the real checkpoints, and loaded and sampled through diffusers' own pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from draft_lightning.testing import t5_tokenizer, tiny_flux, tiny_sd3
from draft_lightning.testing.flow_parts import LATENT_CHANNELS, T5_WIDTH

PROMPTS = ["a misty mountain valley at sunrise", "a red circle on the left of a grey background"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading must never need the hub."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return t5_tokenizer.write_t5_tokenizer(tmp_path_factory.mktemp("t5"))


def bundled_prompts() -> list[str]:
    return [line for line in t5_tokenizer.default_texts() if line.strip()]


def test_t5_tokenizer_reads_every_bundled_prompt_without_unk(t5_folder: Path) -> None:
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(t5_folder)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.model_max_length == 512
    prompts = bundled_prompts()
    assert len(prompts) > 200  # the prompt files and the toy world's 216 captions
    for ids in tokenizer(prompts).input_ids:
        assert ids[-1] == 1 and ids.count(1) == 1  # one </s>, at the end
        assert 2 not in ids and 0 not in ids
    # A known word is one piece; an unknown one is spelled out, not <unk>; only characters
    # outside printable ASCII are unknown.
    assert tokenizer.tokenize("a mountain") == ["▁a", "▁mountain"]
    assert tokenizer.tokenize("Zq!") == ["▁", "Z", "q", "!"]
    assert tokenizer("é").input_ids == [3, 2, 1]


def test_t5_tokenizer_pads_like_the_pipelines(t5_folder: Path) -> None:
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(t5_folder)
    ids = tokenizer(
        ["a cat", PROMPTS[1] * 3], padding="max_length", max_length=12, truncation=True
    ).input_ids
    short = tokenizer("a cat").input_ids
    assert ids[0] == short + [0] * (12 - len(short))
    assert len(ids[1]) == 12 and ids[1][-1] == 1 and 0 not in ids[1]  # truncated, eos kept


def test_t5_tokenizer_is_deterministic(t5_folder: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import T5TokenizerFast

    again = t5_tokenizer.write_t5_tokenizer(tmp_path / "again")
    names = sorted(p.name for p in t5_folder.iterdir())
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    for name in names:
        assert (again / name).read_bytes() == (t5_folder / name).read_bytes(), name
    first = T5TokenizerFast.from_pretrained(t5_folder)(PROMPTS).input_ids
    second = T5TokenizerFast.from_pretrained(again)(PROMPTS).input_ids
    assert first == second
    # transformers rebuilds T5's pipeline around the vocabulary; the raw file agrees with it.
    raw = Tokenizer.from_file(str(t5_folder / "tokenizer.json"))
    assert [e.ids for e in raw.encode_batch(PROMPTS)] == first


@pytest.fixture(scope="module")
def flux_dev() -> Path:
    return tiny_flux.tiny_flux_path()


@pytest.fixture(scope="module")
def flux_schnell() -> Path:
    return tiny_flux.tiny_flux_schnell_path()


@pytest.fixture(scope="module")
def sd3() -> Path:
    return tiny_sd3.tiny_sd3_path()


def read_config(folder: Path, part: str) -> dict:
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return json.loads((folder / part / name).read_text())


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_tiny_flux_has_flux_layout(variant: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(f"flux_{variant}")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    assert index["tokenizer_2"][1] in ("T5Tokenizer", "T5TokenizerFast")
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    transformer = read_config(folder, "transformer")
    vae = read_config(folder, "vae")
    clip = read_config(folder, "text_encoder")
    t5 = read_config(folder, "text_encoder_2")
    scheduler = read_config(folder, "scheduler")
    assert transformer["guidance_embeds"] is (variant == "dev")
    assert transformer["in_channels"] == 4 * vae["latent_channels"] == 4 * LATENT_CHANNELS
    assert transformer["joint_attention_dim"] == t5["d_model"] == T5_WIDTH
    assert transformer["pooled_projection_dim"] == clip["hidden_size"]
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]
    assert vae["scaling_factor"] == 0.3611 and vae["shift_factor"] == 0.1159
    assert vae["use_quant_conv"] is False and vae["use_post_quant_conv"] is False
    expected = "FLUX_DEV" if variant == "dev" else "FLUX_SCHNELL"
    for key, value in getattr(tiny_flux, f"{expected}_SCHEDULER_CONFIG").items():
        assert scheduler[key] == value, key
    assert scheduler["use_dynamic_shifting"] is (variant == "dev")
    assert sorted(p.name for p in (folder / "tokenizer_2").iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_tiny_sd3_has_sd35_medium_layout(sd3: Path) -> None:
    index = json.loads((sd3 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    for part in ("text_encoder", "text_encoder_2"):
        assert index[part] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["text_encoder_3"] == ["transformers", "T5EncoderModel"]
    transformer = read_config(sd3, "transformer")
    clips = [read_config(sd3, p) for p in ("text_encoder", "text_encoder_2")]
    t5 = read_config(sd3, "text_encoder_3")
    vae = read_config(sd3, "vae")
    assert transformer["dual_attention_layers"] == [0]
    assert transformer["qk_norm"] == "rms_norm"
    assert transformer["joint_attention_dim"] == t5["d_model"]
    assert sum(c["hidden_size"] for c in clips) < t5["d_model"]  # CLIP is zero-padded
    assert transformer["pooled_projection_dim"] == sum(c["projection_dim"] for c in clips)
    assert transformer["in_channels"] == vae["latent_channels"] == LATENT_CHANNELS
    assert vae["scaling_factor"] == 1.5305 and vae["shift_factor"] == 0.0609
    assert read_config(sd3, "scheduler")["shift"] == 3.0
    assert read_config(sd3, "scheduler")["use_dynamic_shifting"] is False
    pads = [
        json.loads((sd3 / p / "special_tokens_map.json").read_text())["pad_token"]
        for p in ("tokenizer", "tokenizer_2", "tokenizer_3")
    ]
    assert pads == ["<|endoftext|>", "!", "<pad>"]


def test_builds_are_seeded_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    first = tiny_flux.build_flux_components(seed=0)["transformer"].state_dict()
    assert torch.equal(torch.rand(3), expected)
    second = tiny_flux.build_flux_components(seed=0)["transformer"].state_dict()
    other = tiny_flux.build_flux_components(seed=1)["transformer"].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["x_embedder.weight"], other["x_embedder.weight"])
    sd3_a = tiny_sd3.build_sd3_components(seed=0)["text_encoder_3"].state_dict()
    sd3_b = tiny_sd3.build_sd3_components(seed=0)["text_encoder_3"].state_dict()
    assert all(torch.equal(sd3_a[k], sd3_b[k]) for k in sd3_a)


def load(kind: str, folder: Path):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls = StableDiffusion3Pipeline if kind == "sd3" else FluxPipeline
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_count(pipe) -> int:
    return sum(
        p.numel()
        for m in pipe.components.values()
        if isinstance(m, torch.nn.Module)
        for p in m.parameters()
    )


@pytest.mark.parametrize(
    ("fixture", "guidance"), [("flux_dev", 3.5), ("flux_schnell", 0.0), ("sd3", 5.0)]
)
def test_reloaded_pipeline_generates_finite_images(
    fixture: str, guidance: float, request: pytest.FixtureRequest
) -> None:
    pipe = load(fixture, request.getfixturevalue(fixture))
    assert parameter_count(pipe) < 10_000_000
    images = pipe(
        PROMPTS,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=guidance,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (2, 3, 32, 32)
    assert torch.isfinite(images).all()
    assert images.std() > 0.01  # not a constant image


def test_saved_flux_reloads_bit_identical(flux_dev: Path) -> None:
    built = tiny_flux.build_flux_components(seed=0)
    pipe = load("flux", flux_dev)
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        saved, fresh = getattr(pipe, part).state_dict(), built[part].state_dict()
        assert saved.keys() == fresh.keys(), part
        assert all(torch.equal(saved[k], fresh[k]) for k in saved), part


def test_cached_paths_are_distinct_complete_folders(tmp_path: Path) -> None:
    dev = tiny_flux.tiny_flux_path(tmp_path)
    schnell = tiny_flux.tiny_flux_schnell_path(tmp_path)
    assert dev != schnell and dev.parent == schnell.parent == tmp_path
    stamp = (dev / "model_index.json").stat().st_mtime_ns
    assert tiny_flux.tiny_flux_path(tmp_path) == dev  # built once, then reused
    assert (dev / "model_index.json").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".*tmp-*"))  # no half-built folder left behind
