"""The sharded strategy through the real CLI: `lightning fit --config configs/flux_draft_lv.yaml
--config configs/cpu_tiny_flux.yaml --trainer.devices 2` (the FLUX config selects the sharded
strategy) on two gloo processes, the tiny FLUX.1-dev on a bfloat16 base with float32 LoRA
weights (bf16-mixed), text encoders offloaded, the prompt embedding cache on, two micro-batches
per step. Three runs serve every assertion: an uninterrupted run of 2N steps, and a run killed
with SIGKILL after its checkpoint at step N, then resumed with --ckpt_path last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TEST_PATH, make_module
from safetensors import safe_open
from safetensors.torch import load_file

from draft_lightning.data import PromptDataModule
from draft_lightning.errors import ConfigError
from draft_lightning.models.loading import resolve_pretrained
from draft_lightning.models.lora import LORA_WEIGHTS_NAME, LoraSettings
from draft_lightning.training.sharding import stored_shapes

LIGHTNING = str(Path(sys.executable).with_name("lightning"))
# One optimiser step (two micro-batches per rank) before the kill and one after the resume:
# every assertion below is written in N, and a resume from step 1 restores the same state
# (adapter shards, optimiser, RNG, data position) that one from a later step does.
N = 1
RUN = "runs/flux_draft_lv/version_0"
CACHE_LINE = "prompt_embedding_cache: embedded"


def fit(run: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": TEST_PATH, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [LIGHTNING, "fit", "--config", str(ROOT / "configs/flux_draft_lv.yaml"),
         "--config", str(ROOT / "configs/cpu_tiny_flux.yaml"), "--trainer.devices", "2",
         "--trainer.precision", "bf16-mixed", "--model.frozen_dtype", "bfloat16",
         "--trainer.accumulate_grad_batches", "2",
         "--model.prompt_embedding_cache", str(cache),
         "--trainer.max_steps", str(2 * N), "--checkpoint.every_n_train_steps", str(N),
         "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
         "--model.sampling.num_steps", "4",
         "--trainer.callbacks+", "plugins.recorders.RecordRewards",
         "--trainer.callbacks.folder", str(run / "record"), *extra],
        cwd=run, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def rewards(run: Path) -> list[tuple]:
    """(step, reward, prompts) of every rank's every step (ranks append in any order)."""
    lines = (run / "record" / "rewards.jsonl").read_text().splitlines()
    return sorted((r["step"], r["reward"], r["prompts"]) for r in map(json.loads, lines))


def adapter_metadata(file: Path) -> dict:
    """The adapter config diffusers stores in the file (target module order aside)."""
    with safe_open(str(file), framework="pt") as handle:
        config = json.loads(handle.metadata()["lora_adapter_metadata"])
    config["transformer.target_modules"] = sorted(config["transformer.target_modules"])
    assert config["transformer.r"] == 8 and config["transformer.lora_alpha"] == 8
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from draft_lightning.testing.tiny_flux import tiny_flux_path

    tiny_flux_path()  # built once, before any process group exists
    root = tmp_path_factory.mktemp("sharded_runs")
    cache = root / "embeddings"
    straight, broken = root / "straight", root / "broken"
    straight.mkdir()
    broken.mkdir()
    done = fit(straight, cache)
    assert done.returncode == 0, done.stderr[-4000:]
    killed = fit(broken, cache, "--trainer.callbacks+", "plugins.faults.KillAtStep",
                 "--trainer.callbacks.step", str(N))  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-4000:]
    resumed = fit(broken, cache, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    logs = {"straight": done, "killed": killed, "resumed": resumed}
    return {"straight": straight, "broken": broken, "cache": cache, "logs": logs}


def test_killed_and_resumed_sharded_run_equals_the_uninterrupted_one(runs):
    straight, broken = runs["straight"], runs["broken"]
    assert [p.name for p in (broken / "runs" / "flux_draft_lv").iterdir()] == ["version_0"]
    # Same prompts, same rewards, on both ranks, step by step.
    assert rewards(broken) == rewards(straight)
    # accumulate_grad_batches 2: two micro-batches per optimiser step, on each of two ranks
    steps = [step for s in range(1, 2 * N + 1) for step in (s - 1, s)]
    assert [r[0] for r in rewards(straight)] == sorted(steps * 2)
    ours = load_file(broken / RUN / "lora/last/pytorch_lora_weights.safetensors")
    reference = load_file(straight / RUN / "lora/last/pytorch_lora_weights.safetensors")
    assert ours.keys() == reference.keys() and ours
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    assert all(v.dtype == torch.float32 for v in ours.values())
    assert any(v.abs().max() > 0 for k, v in ours.items() if ".lora_B." in k)  # B moved off 0


def test_a_sharded_checkpoint_holds_only_the_adapter_shards_and_the_run_state(runs):
    folder = runs["straight"] / RUN / "checkpoints" / "last.ckpt"
    assert folder.is_dir()
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    shapes = stored_shapes(folder)
    assert shapes and all(".lora_" in name for name in shapes)
    meta = torch.load(folder / "meta.pt", weights_only=True)
    assert meta["global_step"] == 2 * N
    assert len(meta["rng_states"]) == 2  # every rank's
    assert meta["datamodule_hyper_parameters"]["batch_size"] == 2  # cpu_tiny_flux.yaml
    # steps x micro-batches x ranks x batch
    assert meta["PromptDataModule"]["position"] == 2 * N * 2 * 2 * 2
    # Nothing else is left beside it (no temporary or set-aside folders).
    assert sorted(p.name for p in folder.parent.iterdir()) == ["last.ckpt"]


def test_the_sharded_export_is_the_unsharded_export_of_the_same_weights(runs, tmp_path):
    """Load the sharded checkpoint's shards into an unsharded module in one process and
    export from there: the file equals the run's export (gathered on rank 0), byte for byte,
    and diffusers loads it."""
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict
    from torch.distributed.checkpoint import load

    run = runs["straight"] / RUN
    checkpoint = run / "checkpoints" / "last.ckpt"
    module = make_module(pretrained_model="tiny:flux", frozen_dtype="bfloat16")
    module.check_trained_weights(stored_shapes(checkpoint))  # fits: no error
    weights = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    load({"state_dict": weights}, checkpoint_id=checkpoint, no_dist=True)
    exported = module.pipeline.save_lora(tmp_path / "unsharded") / LORA_WEIGHTS_NAME
    ours = run / f"lora/step={2 * N}" / LORA_WEIGHTS_NAME
    theirs, mine = load_file(exported), load_file(ours)
    assert theirs.keys() == mine.keys()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)
    assert adapter_metadata(ours) == adapter_metadata(exported)

    pipe = FluxPipeline.from_pretrained(resolve_pretrained("tiny:flux"))
    pipe.load_lora_weights(str(ours.parent))
    (name,) = pipe.transformer.peft_config  # diffusers names the adapter it loads
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=name)
    file = load_file(ours)
    assert len(loaded) == len(file)
    for key, value in loaded.items():
        assert torch.equal(value, file[f"transformer.{key}"]), key


def test_a_checkpoint_of_another_adapter_shape_is_refused_in_one_line(runs):
    module = make_module(pretrained_model="tiny:flux", lora=LoraSettings(rank=4))
    checkpoint = runs["straight"] / RUN / "checkpoints" / "last.ckpt"
    with pytest.raises(
        ConfigError, match=r"^ckpt_path: the checkpoint does not fit .*\(lora.rank=4\)$"
    ):
        module.check_trained_weights(stored_shapes(checkpoint))


def test_with_the_embedding_cache_only_the_first_run_builds_the_text_encoders(runs):
    logs = runs["logs"]
    assert CACHE_LINE in logs["straight"].stdout + logs["straight"].stderr
    for name in ("killed", "resumed"):
        assert CACHE_LINE not in logs[name].stdout + logs[name].stderr
    (folder,) = runs["cache"].iterdir()
    files = sorted(p.name for p in folder.iterdir())
    assert "model.json" in files and "unconditional.safetensors" in files
    # One file per prompt of the run's sources (flux_draft_lv.yaml's "general" set, whose
    # first prompts are also the validation prompts), plus the unconditional inputs.
    prompts = PromptDataModule(train_prompts="general", num_val_prompts=4).all_prompts()
    assert len([f for f in files if f.endswith(".safetensors")]) == len(prompts) + 1
