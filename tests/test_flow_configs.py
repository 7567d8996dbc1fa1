"""The flow matching configs as a user runs them: `lightning fit --config
configs/flux_draft_lv.yaml --config configs/cpu_tiny_flux.yaml` (and the SD3.5 pair) trains on
the CPU, raises the validation reward and exports an adapter that diffusers' own pipeline
loads and that changes its pictures; the Direct-Align config trains; offline, the real
configs fail in one line naming what to download (gated repos: accept the licence first)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from flow_reference import load_diffusers
from lightning_runs import run_command

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

pytestmark = pytest.mark.slow


def lightning_fit(configs: list[str], args: list[str], cwd: Path, env=None):
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or os.environ)}
    command = [str(Path(sys.executable).parent / "lightning"), "fit"]
    for config in configs:
        command += ["--config", str(CONFIGS / f"{config}.yaml")]
    # In its own process (forked after the imports when others ran in the same environment:
    # lightning_runs.run_command).
    return run_command(
        [*command, "--trainer.enable_progress_bar", "false", *args],
        cwd=cwd,
        env=env,
        timeout=300,
    )


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


@pytest.mark.parametrize(
    ("config", "overlay", "model"),
    [
        ("flux_draft_lv", "cpu_tiny_flux", "tiny:flux"),
        ("sd35_draft_lv", "cpu_tiny_sd3", "tiny:sd3"),
    ],
)
def test_config_raises_the_reward_and_exports_a_lora_diffusers_loads(
    config, overlay, model, tmp_path
):
    steps = "4"
    args = ["--trainer.max_steps", steps, "--trainer.val_check_interval", steps]
    args += ["--model.sampling.num_steps", "3", "--data.num_val_prompts", "2"]
    result = lightning_fit([config, overlay], args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / config / "version_0"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"]
    assert saved["pretrained_model"] == model
    assert saved["estimator"]["class_path"] == "draft_lightning.estimators.DraftLV"
    # The base model's validation (sanity check, step 0) and after training, fixed seeds.
    (first, before), (last, after) = scalars(run_dir, "val/reward")
    assert (first, last) == (0, 4)
    assert after > before + 0.003, (before, after)

    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from draft_lightning.models.loading import resolve_pretrained

    cls = FluxPipeline if model == "tiny:flux" else StableDiffusion3Pipeline
    pipe = load_diffusers(cls, resolve_pretrained(model))

    def picture() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        call = dict(height=32, width=32, num_inference_steps=3, output_type="pt")
        return pipe("a cat", generator=generator, **call).images

    before_lora = picture()
    pipe.load_lora_weights(run_dir / "lora" / "last")
    assert (picture() - before_lora).abs().max() > 1e-3


def test_the_direct_align_config_trains_with_its_estimator(tmp_path):
    args = ["--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0"]
    args += ["--trainer.limit_val_batches", "0", "--model.sampling.num_steps", "3"]
    result = lightning_fit(["flux_direct_align", "cpu_tiny_flux"], args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "flux_direct_align" / "version_0"
    rewards = scalars(run_dir, "train/reward")
    assert [step for step, _ in rewards] == [0, 1]
    assert all(math.isfinite(value) for _, value in rewards)
    estimator = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"][
        "estimator"
    ]
    assert estimator["class_path"] == "draft_lightning.estimators.DirectAlign"
    assert estimator["init_args"]["sigma_range"] == [0.2, 0.9]
    assert (run_dir / "lora" / "last" / "pytorch_lora_weights.safetensors").is_file()


def test_offline_the_flux_config_names_every_download_and_the_licence_in_one_line(tmp_path):
    """(The SD3.5 repo's gated line: tests/models/test_loading.py, without a subprocess.)"""
    repo = "black-forest-labs/FLUX.1-dev"
    hf_home = tmp_path / "hf"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_HOME")}
    env.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1")
    result = lightning_fit(["flux_draft_lv"], [], tmp_path, env)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    line = lines[0]
    assert "downloads are missing" in line  # the reward's and the model's, together
    assert f"hf download {repo}" in line
    assert f"{repo} is gated: accept its licence at https://huggingface.co/{repo}" in line
    assert not (tmp_path / "runs").exists()
