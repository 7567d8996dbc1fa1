"""Each reward config runs through the real `lightning fit` CLI on the tiny SD model, with an
overlay pointing its reward at the tiny stand-in, and a missing weight file stops the CLI with
one line."""

from __future__ import annotations

import pytest
import torch
import yaml
from lightning_runs import CONFIGS, lightning_fit, logged_rows

pytestmark = pytest.mark.slow

RUNS = {
    "draft_lv": ("tiny_aesthetic", "AestheticReward", "aesthetic"),
    "hpsv2": ("tiny_hpsv2", "HPSv2Reward", "hpsv2"),
    "pickscore": ("tiny_pickscore", "PickScoreReward", "pickscore"),
}


@pytest.mark.parametrize("config", list(RUNS))
def test_config_runs_three_steps_with_its_tiny_reward(config, tiny_sd, tmp_path):
    overlay, reward_class, part = RUNS[config]
    configs = [CONFIGS / f"{config}.yaml", CONFIGS / "cpu_tiny.yaml", CONFIGS / f"{overlay}.yaml"]
    result = lightning_fit(configs, ["--trainer.max_steps", "3"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    (saved,) = (tmp_path / "logs").glob("*/version_0/config.yaml")
    reward = yaml.safe_load(saved.read_text())["model"]["init_args"]["reward"]
    assert reward["class_path"] == f"draft_lightning.rewards.{reward_class}"
    assert any(str(v).startswith("tiny:") for v in reward["init_args"].values())

    rows = logged_rows(tmp_path)
    assert len(rows) == 3 and all(row[f"train/reward/{part}"] for row in rows)
    (last,) = (tmp_path / "logs").glob("*/version_0/checkpoints/last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert not any(key.startswith("reward.") for key in checkpoint["state_dict"])


def test_missing_reward_weights_stop_the_cli_with_one_line(tiny_sd, tmp_path):
    configs = [
        CONFIGS / "draft_lv.yaml",
        CONFIGS / "cpu_tiny.yaml",
        CONFIGS / "tiny_aesthetic.yaml",
    ]
    missing = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    result = lightning_fit(configs, ["--model.reward.init_args.head", str(missing)], tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "AestheticReward.head" in errors[0] and str(missing) in errors[0]
    assert "Traceback" not in result.stderr
