"""Faults a run meets, injected on the tiny model: SIGTERM and SIGINT mid-step and
mid-validation, and what the resumed run does about them.

One uninterrupted run and one run stopped twice (SIGTERM mid-step, then SIGINT
mid-validation) and resumed twice are shared by the assertions below: subprocess runs are
the slow part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TEST_PATH
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LIGHTNING = str(Path(sys.executable).with_name("lightning"))
STEPS = 4  # validation after steps 2 and 4, and of the base model at step 0


def fit(run: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": TEST_PATH, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [LIGHTNING, "fit", "--config", str(ROOT / "configs/draft_lv.yaml"),
         "--config", str(ROOT / "configs/cpu_tiny.yaml"),
         "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "2",
         "--checkpoint.every_n_train_steps", "100",  # only the stops write last.ckpt
         "--model.sampling.num_steps", "4", "--trainer.enable_progress_bar", "false",
         "--data.num_val_prompts", "2", "--data.num_val_seeds", "1",
         "--trainer.callbacks+", "plugins.recorders.RecordRewards",
         "--trainer.callbacks.folder", str(run / "record"), *extra],
        cwd=run, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def signal_at(step: int, where: str, name: str) -> list[str]:
    return ["--trainer.callbacks+", "plugins.faults.SignalAt",
            "--trainer.callbacks.step", str(step), "--trainer.callbacks.where", where,
            "--trainer.callbacks.signal_name", name]  # fmt: skip


def version(run: Path) -> Path:
    (folder,) = (run / "runs" / "draft_lv").iterdir()  # resumed runs log on into it
    return folder


def rewards(run: Path) -> list[tuple[int, float, list[str]]]:
    lines = (run / "record" / "rewards.jsonl").read_text().splitlines()
    return [(r["step"], r["reward"], r["prompts"]) for r in map(json.loads, lines)]


def validations(run: Path) -> dict[int, float]:
    """val/reward by the optimiser step it evaluated (the x-axis the module logs it at), over
    every events file of the run (one per process that logged into it)."""
    found = {}
    for events in sorted(version(run).glob("events.out.tfevents.*")):
        scalars = EventAccumulator(str(events), size_guidance={"scalars": 0}).Reload()
        if "val/reward" in scalars.Tags()["scalars"]:
            for event in scalars.Scalars("val/reward"):
                assert event.step not in found, f"step {event.step} validated twice"
                found[event.step] = event.value
    return found


def lora(run: Path) -> dict[str, torch.Tensor]:
    return load_file(version(run) / "lora" / "last" / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_sd):
    """The uninterrupted run, and the same run stopped by SIGTERM as step 1 runs, resumed,
    stopped by SIGINT as step 2's validation runs, and resumed to the end."""
    straight, stopped = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("stopped")
    done = fit(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    term = fit(stopped, *signal_at(1, "step", "SIGTERM"))
    after_term = torch.load(
        version(stopped) / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
    )
    resumed = fit(stopped, "--ckpt_path", "last", *signal_at(2, "validation", "SIGINT"))
    finished = fit(stopped, "--ckpt_path", "last")
    return {
        "straight": straight,
        "stopped": stopped,
        "done": done,
        "term": term,
        "after_term": after_term,
        "int": resumed,
        "finished": finished,
    }


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


def test_sigterm_mid_step_finishes_the_step_checkpoints_and_exits_143(runs):
    term = runs["term"]
    assert term.returncode == 143, term.stderr[-3000:]
    line = last_line(term)
    assert line.startswith("stopped by SIGTERM at step 2: checkpoint runs/draft_lv/version_0/")
    assert line.endswith(" --ckpt_path last") and "lightning fit --config" in line
    assert "Traceback" not in term.stderr
    assert runs["after_term"]["global_step"] == 2  # the step under way finished
    assert [r[0] for r in rewards(runs["stopped"])][:2] == [1, 2]


def test_sigint_mid_validation_abandons_it_checkpoints_and_exits_130(runs):
    stopped = runs["int"]
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert last_line(stopped).startswith("stopped by SIGINT at step 2: checkpoint ")
    assert "Traceback" not in stopped.stderr + stopped.stdout


def test_resumed_run_equals_the_uninterrupted_one_and_redoes_the_abandoned_validation(runs):
    finished = runs["finished"]
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "step 2's validation did not finish; validating it first" in finished.stderr
    straight, stopped = runs["straight"], runs["stopped"]
    assert rewards(stopped) == rewards(straight)  # same prompts and rewards, step by step
    ours, reference = lora(stopped), lora(straight)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    # Every validation of the uninterrupted run, step 2's included, once, with its value.
    expected = validations(straight)
    assert sorted(expected) == [0, 2, 4]
    assert validations(stopped) == pytest.approx(expected, abs=1e-6)


def test_run_summary_after_resumes_reports_the_base_model_to_the_last_step(runs):
    summary = [line for line in runs["finished"].stderr.splitlines() if "val/reward:" in line]
    straight = [line for line in runs["done"].stderr.splitlines() if "val/reward:" in line]
    assert summary == straight
    assert summary[0].startswith("val/reward: ") and " at step 0 -> " in summary[0]
