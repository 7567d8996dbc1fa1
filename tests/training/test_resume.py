"""Exact resume: a run killed with SIGKILL and resumed with --ckpt_path last ends where an
uninterrupted run ends, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT, TEST_PATH
from lightning_runs import run_command

LIGHTNING = str(Path(sys.executable).with_name("lightning"))
N = 3


def fit(run: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": TEST_PATH,
        "OMP_NUM_THREADS": "1",
    }
    # In its own process, forked after the imports (lightning_runs.run_command).
    return run_command(
        [LIGHTNING, "fit", "--config", str(ROOT / "configs/draft_lv.yaml"),
         "--config", str(ROOT / "configs/cpu_tiny.yaml"),
         "--trainer.max_steps", str(2 * N), "--checkpoint.every_n_train_steps", str(N),
         "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
         "--model.sampling.num_steps", "4",
         "--trainer.callbacks+", "plugins.recorders.RecordRewards",
         "--trainer.callbacks.folder", str(run / "record"), *extra],
        cwd=run, env=env, timeout=240,
    )  # fmt: skip


def rewards(run: Path) -> list[tuple[int, float, list[str]]]:
    lines = (run / "record" / "rewards.jsonl").read_text().splitlines()
    return [(r["step"], r["reward"], r["prompts"]) for r in map(json.loads, lines)]


def lora(run: Path) -> dict[str, torch.Tensor]:
    (last,) = run.glob("runs/draft_lv/version_*/lora/last/pytorch_lora_weights.safetensors")
    from safetensors.torch import load_file

    return load_file(last)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_sd):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    done = fit(straight)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = fit(broken, "--trainer.callbacks+", "plugins.faults.KillAtStep",
                 "--trainer.callbacks.step", str(N))  # fmt: skip
    assert killed.returncode == -9
    assert [r[0] for r in rewards(broken)] == list(range(1, N + 1))

    resumed = fit(broken, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # One version folder: the resumed run logged on into the killed run's version.
    assert [p.name for p in (broken / "runs" / "draft_lv").iterdir()] == ["version_0"]

    assert rewards(broken) == rewards(straight)  # same prompts, same rewards, step by step
    ours, reference = lora(broken), lora(straight)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_missing_or_corrupt_checkpoints_are_refused_in_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.ones(2)}, plain)
    for path, expected in [
        (tmp_path / "missing.ckpt", "no such file"),
        (corrupt, "is not a readable checkpoint"),
        (plain, "is not a Lightning checkpoint"),
    ]:
        before = sorted(tmp_path.iterdir())
        done = fit(tmp_path, "--ckpt_path", str(path))
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ckpt_path=") and expected in lines[0]
        assert "Traceback" not in done.stderr + done.stdout
        assert sorted(tmp_path.iterdir()) == before  # nothing written
