"""The prompt embedding cache (models/prompt_cache.py): the same loss as encoding on the fly,
a run with a filled cache never constructs a text encoder, and entries are keyed by model and
settings. The sharded CLI runs use it too (tests/training/test_sharded.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module
from lightning.pytorch import Trainer

from draft_lightning.data import PromptDataModule
from draft_lightning.errors import ConfigError
from draft_lightning.randomness import StepRandomness
from draft_lightning.samplers.settings import SamplingSettings

PROMPTS = ["a red cube", "an astronaut riding a horse"]


def seeded_module(**overrides):
    torch.manual_seed(0)  # the same LoRA initialisation in every module
    return make_module(**overrides)


@pytest.mark.parametrize("model", ["tiny:sd", "tiny:sdxl", "tiny:flux"])
def test_cached_embeddings_give_the_loss_of_encoding_on_the_fly(model, tmp_path):
    on_the_fly = seeded_module(pretrained_model=model)
    cached = seeded_module(pretrained_model=model, prompt_embedding_cache=str(tmp_path))
    assert cached.pipeline.precompute_prompts(PROMPTS, "cpu") == 2
    assert cached.pipeline.precompute_prompts(PROMPTS, "cpu") == 0  # already there
    expected = on_the_fly.pipeline.condition(PROMPTS)
    got = cached.pipeline.condition(PROMPTS)
    for side in ("cond", "uncond"):  # FLUX.1-dev has no unconditional inputs: None == None
        torch.testing.assert_close(getattr(got, side), getattr(expected, side), rtol=0, atol=1e-6)
    losses = [
        module.reward_loss(PROMPTS, StepRandomness(0, 0, 0)).loss for module in (on_the_fly, cached)
    ]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)


def forbid_text_encoders(monkeypatch) -> None:
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a text encoder was constructed")

    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel"):
        monkeypatch.setattr(getattr(transformers, name), "__init__", refuse)
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)


def fit(module, root) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    data = PromptDataModule(train_prompts=PROMPTS + ["a cat"], batch_size=2, num_val_prompts=2)
    trainer.fit(module, data)
    return trainer


def test_a_run_with_a_filled_cache_never_constructs_the_text_encoders(tmp_path, monkeypatch):
    """On the tiny FLUX.1-dev: neither CLIP nor T5 is constructed by the second run."""
    cache = tmp_path / "embeddings"
    settings = {"pretrained_model": "tiny:flux", "prompt_embedding_cache": str(cache)}
    first = seeded_module(**settings)
    fit(first, tmp_path / "first")  # fills the cache at setup, then trains from it
    assert first.pipeline.prompt_encoder.encoders_built == 1
    (folder,) = cache.iterdir()
    assert len(list(folder.glob("*.safetensors"))) == 3 + 1  # 3 prompts, unconditional

    forbid_text_encoders(monkeypatch)
    second = seeded_module(**settings)
    trainer = fit(second, tmp_path / "second")
    assert second.pipeline.prompt_encoder.encoders_built == 0
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not any("prompt_encoder" in name for name, _ in second.named_parameters())
    with pytest.raises(ConfigError, match=r"has no embedding of 'a dog' for this model"):
        second.pipeline.condition(["a dog"])


def test_entries_are_keyed_by_model_and_settings(tmp_path):
    base = seeded_module(pretrained_model="tiny:sdxl", prompt_embedding_cache=str(tmp_path))
    other_guidance = seeded_module(
        pretrained_model="tiny:sdxl",
        prompt_embedding_cache=str(tmp_path),
        sampling=SamplingSettings(num_steps=4, guidance_scale=5.0, resolution=32),
    )
    other_model = seeded_module(pretrained_model="tiny:sd", prompt_embedding_cache=str(tmp_path))
    folders = {m.pipeline.prompt_encoder.cache.folder for m in (base, other_guidance, other_model)}
    assert len(folders) == 3
    base.pipeline.precompute_prompts(["a cat"], "cpu")
    assert other_guidance.pipeline.precompute_prompts(["a cat"], "cpu") == 1  # its own entry

    # A file that holds another prompt (a hash collision, or files copied around) is refused.
    cache = base.pipeline.prompt_encoder.cache
    cache.path("a cat").rename(cache.path("a dog"))
    with pytest.raises(ConfigError, match="holds another prompt's embedding"):
        base.pipeline.condition(["a dog"])
