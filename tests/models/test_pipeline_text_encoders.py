"""The frozen text encoders of models/pipeline.py: run once per prompt batch without gradient,
and with `offload_text_encoders` kept out of the module tree (so Lightning's device moves and
checkpoints never touch them) and moved to the denoiser's device only for that one pass.

This machine has no accelerator, where a move is a no-op: the moves are recorded against a
fake device instead. That the copies happen on a real GPU, and the memory they save, is not
tested here."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module

from draft_lightning.estimators import DraftLV
from draft_lightning.models.pipeline import Pipeline
from draft_lightning.samplers.settings import SamplingSettings

PROMPTS = ["a cat", "a dog"]
SETTINGS = SamplingSettings(num_steps=2, guidance_scale=3.0, resolution=32)


@pytest.fixture(scope="module")
def kept():
    return make_module(pretrained_model="tiny:sd3", sampling=SETTINGS, estimator=DraftLV(n=2))


def test_encoders_run_once_per_batch_without_gradient(kept, monkeypatch):
    encoder = kept.pipeline.prompt_encoder
    seen = []
    original = encoder.embed
    monkeypatch.setattr(
        encoder, "embed", lambda prompts: seen.append(list(prompts)) or original(prompts)
    )
    for step in range(2):
        loss = kept.training_step({"prompts": PROMPTS}, step)
        loss.backward()
    # DRaFT-LV scores 2 copies per prompt, from one encoding; the empty prompt once, cached.
    assert seen == [PROMPTS, ["", ""], PROMPTS]
    text = kept.pipeline.condition(PROMPTS)
    assert not text.cond["encoder_hidden_states"].requires_grad
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())


def test_offloaded_encoders_are_outside_the_module_and_visit_the_device_per_call(kept, monkeypatch):
    module = make_module(pretrained_model="tiny:sd3", sampling=SETTINGS, offload_text_encoders=True)
    encoder = module.pipeline.prompt_encoder
    # Outside the module tree: .to(device), state_dict and DDP never see them.
    assert not any(name.startswith("pipeline.prompt_encoder") for name in module.state_dict())
    assert any(name.startswith("pipeline.prompt_encoder") for name in kept.state_dict())
    trained = {id(p) for p in module.parameters()}
    assert not any(id(p) in trained for p in encoder.parameters())

    # A fake accelerator: the pipeline reports a device the encoders are not on, and each
    # requested move is recorded (and, on this CPU-only machine, not carried out).
    fake = torch.device("meta")
    monkeypatch.setattr(Pipeline, "device", property(lambda self: fake))
    moves, during = [], []
    monkeypatch.setattr(encoder, "to", lambda device: moves.append(torch.device(device)) or encoder)
    original = encoder.embed
    monkeypatch.setattr(encoder, "embed", lambda p: during.append(moves[-1]) or original(p))

    text = module.pipeline.condition(PROMPTS)
    assert moves == [fake, torch.device("cpu")] and during == [fake, fake]  # prompts, then ""
    expected = kept.pipeline.condition(PROMPTS)
    for key, value in expected.cond.items():
        torch.testing.assert_close(text.cond[key], value, rtol=0, atol=0)

    # Back on the CPU even when encoding fails.
    monkeypatch.setattr(encoder, "embed", lambda p: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        module.pipeline.condition(["another prompt"])
    assert moves[-2:] == [fake, torch.device("cpu")]
    assert all(p.device.type == "cpu" for p in encoder.parameters())
