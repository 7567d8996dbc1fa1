"""A user's own Reward subclass, in a module outside draft_lightning, named by class_path in
YAML and trained through the real `lightning fit` CLI (tests/custom_reward_example/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning_runs import CONFIGS, lightning_fit, logged_rows

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "custom_reward_example"


def test_custom_reward_from_the_users_module_trains_through_the_cli(tiny_sd, tmp_path):
    configs = [
        CONFIGS / "draft_lv.yaml",
        CONFIGS / "cpu_tiny.yaml",
        EXAMPLE / "warm_and_bright.yaml",
    ]
    result = lightning_fit(configs, ["--trainer.max_steps", "2"], tmp_path, pythonpath=EXAMPLE)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = logged_rows(tmp_path)
    assert len(rows) == 2
    # The user's reward (no package reward is called warm_tones) is logged under its own name,
    # beside the built-in one, and weighted as stated.
    for row in rows:
        warm, bright = float(row["train/reward/warm_tones"]), float(row["train/reward/brightness"])
        assert float(row["train/reward"]) == pytest.approx(warm + 0.5 * bright, abs=1e-5)
