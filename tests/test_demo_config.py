"""`make demo` (configs/demo.yaml over draft_lv.yaml) on the shipped toy model, a few steps:
it needs nothing in the cache, prints its answer and the picture's path, writes the picture,
and prints nothing a new user cannot act on; the judge's check reads the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "configs" / "draft_lv.yaml", ROOT / "configs" / "demo.yaml"]
FEW_STEPS = [
    "--trainer.max_steps", "2",
    "--trainer.val_check_interval", "2",
    "--checkpoint.every_n_train_steps", "2",
    "--model.sampling.num_steps", "4",
    "--data.num_val_prompts", "3",
    "--data.batch_size", "2",
]  # fmt: skip


@pytest.mark.slow
def test_demo_runs_on_the_shipped_model_and_writes_its_before_after_picture(tmp_path):
    cache = tmp_path / "empty-cache"
    env = {
        **os.environ,
        "DRAFT_LIGHTNING_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [str(Path(sys.executable).parent / "lightning"), "fit"]
    for config in CONFIGS:
        command += ["--config", str(config)]
    result = subprocess.run(
        [*command, *FEW_STEPS], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    picture = tmp_path / "runs" / "demo" / "version_0" / "comparison.png"
    lines = output.splitlines()
    reward_line = next(i for i, line in enumerate(lines) if line.startswith("val/reward:"))
    assert "at step 0 ->" in lines[reward_line] and "at step 2" in lines[reward_line]
    assert lines[reward_line + 1] == "before/after picture: runs/demo/version_0/comparison.png"
    assert Image.open(picture).size[0] == 3 * 96  # one column per validation prompt
    for noise in ("Epoch 0/", "v_num", "Tip:", "LeafSpec", "Warning", "warn("):
        assert noise not in output, noise
    assert not cache.exists() or not any(cache.iterdir())  # nothing built: all shipped

    check_command = [sys.executable, "-m", "draft_lightning.toy.check", "runs/demo/version_0"]
    check = subprocess.run(
        [*check_command, "--num_seeds", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "demo" / "version_0" / "check-last.json").read_text())
    assert report["images"] == 3
    for model in ("base", "tuned"):
        assert set(report[model]) == {
            "reward",
            "judge: colour is red",
            *(f"judge: {a} as captioned" for a in ("shape", "size", "position", "background")),
            "all",
            "renderer: distance to a clean shape",
            "renderer: as clean as the base's worst",
        }
        assert all(0 <= v <= 1 for v in report[model].values())
    # The renderer's tolerance is the base model's farthest image: all of the base's pass.
    assert report["base"]["renderer: as clean as the base's worst"] == 1.0
    assert 0 < report["base"]["renderer: distance to a clean shape"] < 0.1
    assert "judge: colour is red" in check.stdout
