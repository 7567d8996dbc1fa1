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


def test_a_skipped_step_logs_its_own_gradient_norm_not_the_previous_one(tiny_sd, tmp_path):
    import csv

    from conftest import make_module
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger
    from plugins.faults import NaNScores

    from draft_lightning.data import PromptDataModule
    from draft_lightning.training.nonfinite_guard import NonFiniteGuard

    trainer = Trainer(
        accelerator="cpu", max_steps=4, limit_val_batches=0, num_sanity_val_steps=0,
        logger=CSVLogger(tmp_path), log_every_n_steps=1, enable_checkpointing=False,
        callbacks=[NonFiniteGuard(patience=3)], enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(make_module(reward=NaNScores(train_calls=[2])), PromptDataModule(batch_size=2))
    (metrics,) = tmp_path.rglob("metrics.csv")
    with open(metrics, newline="") as file:
        rows = [r for r in csv.DictReader(file) if r["train/grad_norm"]]
    norms = [float(r["train/grad_norm"]) for r in rows]
    assert [float(r["train/skipped_steps"]) for r in rows] == [0, 0, 1, 1]
    assert norms[2] != norms[2]  # NaN: the skipped step's own norm
    assert all(n == n and n > 0 for n in norms[:2] + norms[3:])


def test_nonfinite_validation_scores_are_counted_and_never_averaged_away():
    from draft_lightning.evaluation.evaluator import Evaluator

    evaluator = Evaluator(["brightness"])
    images = torch.rand(4, 3, 8, 8)
    scores = torch.tensor([0.5, float("nan"), 0.25, float("inf")])
    batch = {"prompts": ["a", "b", "c", "d"], "seeds": [0, 0, 0, 0]}
    evaluator.update(batch, images, scores, {"brightness": scores}, None)
    values, _ = evaluator.compute("val", 1)
    assert values["val/nonfinite"] == 2
    assert not torch.isfinite(values["val/reward"])  # not 0.375, the mean of the finite half
    evaluator.update(batch, images, torch.ones(4), {"brightness": torch.ones(4)}, None)
    values, _ = evaluator.compute("val", 1)  # reset between evaluations
    assert values["val/nonfinite"] == 0 and values["val/reward"] == 1


def test_best_checkpoint_never_keeps_a_nonfinite_evaluation():
    from draft_lightning.training.best_checkpoint import BestCheckpoint

    best = BestCheckpoint(monitor="val/reward", mode="max")
    assert not best.check_monitor_top_k(None, torch.tensor(float("nan")))  # none kept yet
    assert best.check_monitor_top_k(None, torch.tensor(0.1))
    assert best.state_key.startswith("ModelCheckpoint{")  # resumes older checkpoints' state


def test_nan_in_validation_is_reported_and_never_the_best_checkpoint(tmp_path, tiny_sd):
    done = fit(tmp_path, "--trainer.max_steps", "2", "--trainer.val_check_interval", "1",
               "--model.reward", "plugins.faults.NaNScores",
               "--model.reward.validation", "true")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    summary = [line for line in done.stderr.splitlines() if line.startswith("val/")]
    assert summary[0] == "val/reward: nan at step 0 -> nan at step 2"
    assert summary[1].startswith("val/nonfinite: non-finite validation rewards (1 at step 0, ")
    scalars = EventAccumulator(str(version(tmp_path)), size_guidance={"scalars": 0}).Reload()
    assert [e.value for e in scalars.Scalars("val/nonfinite")] == [1.0, 1.0, 1.0]  # 1 of 2
    assert not list(version(tmp_path).glob("checkpoints/best-*"))


def test_the_nonfinite_guard_stops_a_run_with_one_error_line(tmp_path, tiny_sd):
    done = fit(tmp_path, "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0",
               "--trainer.num_sanity_val_steps", "0", "--nonfinite_guard.patience", "2",
               "--model.reward", "plugins.faults.NaNScores",
               "--model.reward.train_calls", "[1, 2]")  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert last_line(done) == (
        "error: nonfinite_guard: steps 2 to 3 (2 in a row, patience=2) had a non-finite loss "
        "or gradient; stopped. The last checkpoint is intact: lower the learning rate or "
        "check the reward, then resume with --ckpt_path last"
    )
