"""Weightless building of the rewards the shipped configs name: the real architecture from
shipped config files, on the meta device, scored through the reward's own code."""

from __future__ import annotations

import torch

from draft_lightning.planning.weightless import weightless


def test_pickscore_builds_its_real_architecture_without_weights():
    from draft_lightning.rewards import PickScoreReward

    with weightless():
        reward = PickScoreReward(dtype="bfloat16", gradient_checkpointing=True)  # hub defaults
    vision = reward.model.config.vision_config
    text = reward.model.config.text_config
    assert (vision.num_hidden_layers, vision.hidden_size, vision.patch_size) == (32, 1280, 14)
    assert (text.num_hidden_layers, text.hidden_size) == (24, 1024)
    parameters = sum(p.numel() for p in reward.model.parameters())
    assert 980e6 < parameters < 990e6  # CLIP ViT-H-14: 986M
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in reward.model.parameters())
    images = torch.zeros(2, 3, 256, 256, device="meta", requires_grad=True)
    scores = reward(images, ["a cat", "a dog"])
    assert scores.shape == (2,) and scores.is_meta
    scores.sum().backward()  # the gradient reaches the images through the image tower
    assert images.grad is not None and images.grad.shape == images.shape


def test_an_open_clip_tower_built_without_weights_on_purpose_logs_no_warning(caplog):
    """open_clip warns on the root logger whenever it builds without weights; in the plan that
    is the intent, so `lightning plan` on configs/draft_lv.yaml printed the warning."""
    import logging

    import open_clip

    with caplog.at_level(logging.WARNING), weightless():
        model = open_clip.create_model("ViT-B-32", pretrained="openai")
    assert next(model.parameters()).is_meta
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    logging.warning("No pretrained weights loaded for model 'x'.")  # outside: still shown
    assert len(caplog.records) == 1
