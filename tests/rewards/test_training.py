"""Model rewards inside a real (tiny) training run: they never change, never reach a
checkpoint, still pass gradient to the LoRA weights, and WeightedSum logs every part."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import make_module
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from draft_lightning.data import PromptDataModule
from draft_lightning.rewards import AestheticReward, CLIPScoreReward, WeightedSum

WEIGHTS = [1.0, 0.5]


@pytest.fixture(scope="module")
def run(tiny_sd, tmp_path_factory):
    """Five optimiser steps on the tiny SD with a weighted sum of two tiny model rewards."""
    folder = tmp_path_factory.mktemp("run")
    reward = WeightedSum(
        [
            AestheticReward(
                head="tiny:aesthetic", clip_model="tiny:clip", clip_pretrained="tiny:clip"
            ),
            CLIPScoreReward(model="tiny:clip", pretrained="tiny:clip"),
        ],
        weights=WEIGHTS,
    )
    reward_before = {k: v.clone() for k, v in reward.state_dict().items()}
    module = make_module(reward=reward, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    lora_before = [p.detach().clone() for p in module.trainable_parameters()]
    trainer = Trainer(
        accelerator="cpu",
        max_steps=5,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=CSVLogger(folder, name="csv", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, PromptDataModule(batch_size=2))
    checkpoint = folder / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    return {
        "module": module,
        "reward_before": reward_before,
        "lora_before": lora_before,
        "metrics": folder / "csv" / "version_0" / "metrics.csv",
        "checkpoint": checkpoint,
        "trainer": trainer,
    }


def test_reward_weights_do_not_change_while_lora_weights_learn(run):
    module = run["module"]
    assert run["trainer"].global_step == 5
    for key, value in module.reward.state_dict().items():
        assert torch.equal(value, run["reward_before"][key]), key
    changed = [
        not torch.equal(p, q)
        for p, q in zip(module.trainable_parameters(), run["lora_before"], strict=True)
    ]
    assert any(changed)  # the reward's gradient reached the adapter


def test_checkpoint_holds_no_reward_weights(run):
    checkpoint = torch.load(run["checkpoint"], map_location="cpu", weights_only=True)
    keys = list(checkpoint["state_dict"])
    assert keys and all("lora_" in key for key in keys)
    assert not any(key.startswith("reward.") for key in keys)


def test_weighted_sum_logs_each_part_and_the_weighted_total(run):
    with open(run["metrics"], newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/reward")]
    assert len(rows) == 5
    for row in rows:
        aesthetic = float(row["train/reward/aesthetic"])
        clip_score = float(row["train/reward/clip_score"])
        total = float(row["train/reward"])
        expected = WEIGHTS[0] * aesthetic + WEIGHTS[1] * clip_score
        assert total == pytest.approx(expected, abs=1e-5)
