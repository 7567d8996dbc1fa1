"""Distributed behaviour on the CPU (gloo): two processes through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TEST_PATH, make_module
from lightning.pytorch import Trainer
from lightning_runs import run_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from draft_lightning.data import PromptDataModule
from draft_lightning.rewards import Brightness
from draft_lightning.samplers.settings import SamplingSettings

LIGHTNING = str(Path(sys.executable).with_name("lightning"))
TINY = [
    "--config",
    str(ROOT / "configs/draft_k.yaml"),
    "--config",
    str(ROOT / "configs/cpu_tiny.yaml"),
]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": TEST_PATH,
        "OMP_NUM_THREADS": "1",
    }


def launch(
    command: list[str], cwd: Path, devices: int, timeout: float
) -> subprocess.CompletedProcess:
    """Run `command`: with one device in its own process forked after the imports
    (lightning_runs.run_command); with two, as a subprocess whose ranks are its children."""
    if devices == 1:
        return run_command(command, cwd=cwd, env=env(), timeout=timeout)
    return subprocess.run(
        command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_rank_that_fails_ends_the_whole_job_promptly(tmp_path):
    start = time.monotonic()
    process = subprocess.Popen(
        [
            LIGHTNING,
            "fit",
            *TINY,
            "--trainer.max_steps",
            "6",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.limit_val_batches",
            "0",
            "--model.sampling.num_steps",
            "4",
            "--model.reward",
            "plugins.faults.RaiseOnRank",
            "--model.reward.rank",
            "1",
            "--model.reward.call",
            "2",
        ],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    assert process.returncode != 0
    assert time.monotonic() - start < 60
    assert "injected failure on rank 1" in output
    deadline = time.monotonic() + 15  # ranks may take a moment to finish exiting
    while time.monotonic() < deadline:
        leftover = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True)
        if not leftover.stdout.strip():
            break
        time.sleep(0.5)
    assert not leftover.stdout.strip(), "a rank outlived the job by more than 15 s"


def test_validation_reward_is_the_mean_over_every_rank(tmp_path, tiny_sd):
    results = {}
    for devices in (1, 2):
        run = tmp_path / f"d{devices}"
        run.mkdir()
        command = [LIGHTNING, "validate", *TINY, "--trainer.devices", str(devices),
                   "--trainer.strategy", "ddp" if devices > 1 else "auto"]  # fmt: skip
        completed = launch(command, run, devices, timeout=180)
        assert completed.returncode == 0, completed.stderr[-2000:]
        (log_dir,) = (run / "runs" / "draft_k").iterdir()
        results[devices] = scalars(log_dir, "val/reward")[-1][1]

    # Per-sample rewards of the same validation set, in its order (4 prompts x 2 seeds).
    module = make_module(
        reward=Brightness(),
        sampling=SamplingSettings(num_steps=10, guidance_scale=3.0, resolution=32),
    )
    data = PromptDataModule(batch_size=2, num_val_prompts=4, num_val_seeds=2)
    data.setup("validate")
    batch = next(
        iter(
            data.val_dataloader().__class__(
                data.val_dataloader().dataset,
                batch_size=8,
                collate_fn=data.val_dataloader().collate_fn,
            )
        )
    )
    scores = module.reward(module.generate(batch["prompts"], batch["seeds"]), batch["prompts"])
    everyone, rank0_half = scores.mean().item(), scores[0::2].mean().item()
    assert abs(everyone - rank0_half) > 1e-4, "pick data where the halves differ"
    assert results[1] == pytest.approx(everyone, abs=1e-5)
    assert results[2] == pytest.approx(everyone, abs=1e-5)


def test_bf16_mixed_runs_on_the_cpu_and_lora_stays_float32(tiny_sd, tmp_path):
    module = make_module()
    trainer = Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    before = [p.detach().clone() for p in module.trainable_parameters()]
    trainer.fit(module, PromptDataModule(batch_size=2))
    after = module.trainable_parameters()
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(torch.isfinite(p).all() for p in after)
    assert torch.isfinite(trainer.callback_metrics["train/reward"])


def one_step(
    tmp_path: Path, devices: int, batch: int, record: Path, *extra: str
) -> dict[str, torch.Tensor]:
    """LoRA weights after one plain SGD step (lr 1), so updates compare as gradients."""
    run = tmp_path / f"devices{devices}{'-extra' if extra else ''}"
    run.mkdir()
    completed = launch(
        [
            LIGHTNING,
            "fit",
            "--config",
            str(ROOT / "configs/draft_lv.yaml"),
            "--config",
            str(ROOT / "configs/cpu_tiny.yaml"),
            "--trainer.max_steps",
            "1",
            "--trainer.devices",
            str(devices),
            "--trainer.strategy",
            "ddp" if devices > 1 else "auto",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.gradient_clip_val",
            "null",
            "--data.batch_size",
            str(batch),
            "--model.sampling.num_steps",
            "4",
            "--model.optimizer",
            "torch.optim.SGD",
            "--model.optimizer.lr",
            "1.0",
            "--trainer.callbacks+",
            "plugins.recorders.RecordSamples",
            "--trainer.callbacks.folder",
            str(record),
            *extra,
        ],
        run,
        devices,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (checkpoint,) = run.glob("runs/draft_lv/version_0/checkpoints/last.ckpt")
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def read_records(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in open(f)]


def test_a_ddp_step_equals_one_process_with_the_global_batch(tmp_path, tiny_sd):
    single = one_step(tmp_path, devices=1, batch=4, record=tmp_path / "single")
    ddp = one_step(tmp_path, devices=2, batch=2, record=tmp_path / "ddp")
    assert single.keys() == ddp.keys() and single
    lora_b = [v for k, v in single.items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b), "B starts at 0: the step moved it"
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-7)
    # The same (prompt, x_T) pairs, dealt across the two ranks without repeats.
    seen_single = {(r["prompt"], r["noise"]) for r in read_records(tmp_path / "single")}
    records = read_records(tmp_path / "ddp")
    pairs = [(r["prompt"], r["noise"]) for r in records]
    assert {r["rank"] for r in records} == {0, 1}
    assert len(pairs) == len(set(pairs)) == 4
    assert set(pairs) == seen_single


def test_a_ddp_step_through_the_compiled_paths_equals_one_eager_process(tmp_path, tiny_sd):
    """`compile_unet` under DDP: each differentiated call's parameter gradients come from
    the recompute in backward (an autograd.Function whose inputs are the LoRA weights), and
    must still reach DDP's all-reduce. The compiled graph's stand-in (the eager denoiser,
    plugins/compiled.py) takes the same paths on both ranks without compiling."""
    single = one_step(tmp_path, devices=1, batch=4, record=tmp_path / "single")
    counts = tmp_path / "recomputed"
    extra = ["--trainer.callbacks+", "plugins.compiled.CompiledStandIn"]
    ddp = one_step(
        tmp_path, 2, 2, tmp_path / "ddp", *extra, "--trainer.callbacks.folder", str(counts)
    )
    ranks = [json.loads((counts / f"rank{r}.json").read_text())["recomputed"] for r in (0, 1)]
    assert all(n > 0 for n in ranks), ranks  # every rank's gradient came from the recompute
    assert single.keys() == ddp.keys() and single
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-7)
