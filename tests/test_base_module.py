"""What every method shares (base_module.py): checkpoints hold exactly the trained weights,
and a checkpoint that does not fit is refused instead of silently ignored."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module

from draft_lightning.errors import ConfigError
from draft_lightning.models.lora import LoraSettings


def trained_state(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_checkpoints_written_before_the_reorganisation_load_into_the_denoiser(tiny_sd):
    """Their keys say `unet.`; the denoiser now lives at `pipeline.denoiser.`."""
    source, target = make_module(), make_module()
    with torch.no_grad():
        for p in source.pipeline.trainable_parameters():
            p.add_(torch.randn_like(p))
    legacy = {"unet." + k[len("pipeline.denoiser.") :]: v for k, v in trained_state(source).items()}
    checkpoint = {"state_dict": legacy}
    target.on_load_checkpoint(checkpoint)
    target.load_state_dict(checkpoint["state_dict"], strict=False)
    for name, value in trained_state(target).items():
        assert torch.equal(value, trained_state(source)[name]), name


def test_a_checkpoint_of_another_rank_is_refused_in_one_line(tiny_sd):
    rank4 = make_module(lora=LoraSettings(rank=4))
    checkpoint = {"state_dict": trained_state(make_module(lora=LoraSettings(rank=8)))}
    with pytest.raises(ConfigError, match=r"does not fit this model's adapter.*lora.rank=4"):
        rank4.on_load_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match="missing in the file"):
        rank4.on_load_checkpoint({"state_dict": {}})


def test_the_base_models_reward_survives_a_checkpoint(tiny_sd):
    """val/reward_gain after a resume is measured from the base model of the first run."""
    module = make_module()
    module.base_reward = 0.25
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    resumed = make_module()
    assert resumed.base_reward is None
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.base_reward == 0.25
