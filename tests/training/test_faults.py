"""Faults a run meets, injected on the tiny model: SIGTERM and SIGINT before the first step,
mid-step, mid-validation and after the last step, and what the resumed run does about them.

One uninterrupted run and one run stopped four times (SIGTERM as the trainer has set up,
SIGTERM mid-step, SIGINT mid-validation, SIGTERM as the run summary prints) and resumed
three times are shared by the assertions below: subprocess runs are the slow part."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TEST_PATH
from lightning.pytorch import Callback
from lightning_runs import run_command
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LIGHTNING = str(Path(sys.executable).with_name("lightning"))
STEPS = 4  # validation after steps 2 and 4, and of the base model at step 0


def fit(run: Path, *extra: str, command: str = "fit") -> subprocess.CompletedProcess:
    """`lightning <command>` in its own process (forked after the imports: run_command)."""
    env = {**os.environ, "PYTHONPATH": TEST_PATH, "OMP_NUM_THREADS": "1"}
    return run_command(
        [LIGHTNING, command, "--config", str(ROOT / "configs/draft_lv.yaml"),
         "--config", str(ROOT / "configs/cpu_tiny.yaml"),
         "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "2",
         "--checkpoint.every_n_train_steps", "100",  # only the stops write last.ckpt
         "--model.sampling.num_steps", "4", "--trainer.enable_progress_bar", "false",
         "--data.num_val_prompts", "2", "--data.num_val_seeds", "1",
         "--trainer.callbacks+", "plugins.recorders.RecordRewards",
         "--trainer.callbacks.folder", str(run / "record"), *extra],
        cwd=run, env=env, timeout=240,
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
    """The uninterrupted run, and the same run stopped by SIGTERM once the trainer has set up
    (before the base model's validation), resumed, stopped by SIGTERM as step 1 runs,
    resumed, stopped by SIGINT as step 2's validation runs, and resumed to the end, where a
    SIGTERM arrives after the last step's checks (as the run summary prints)."""
    straight, stopped = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("stopped")
    done = fit(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    setup = fit(stopped, *signal_at(0, "fit_start", "SIGTERM"))
    after_setup = {
        "files": sorted(str(p.relative_to(version(stopped))) for p in version(stopped).rglob("*")),
        "checkpoint": torch.load(
            version(stopped) / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
        ),
    }
    term = fit(stopped, "--ckpt_path", "last", *signal_at(1, "step", "SIGTERM"))
    after_term = torch.load(
        version(stopped) / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
    )
    resumed = fit(stopped, "--ckpt_path", "last", *signal_at(2, "validation", "SIGINT"))
    stale = version(stopped) / "checkpoints" / ".last.ckpt.tmp-k1ll3d"  # a kill mid-save's
    stale.write_bytes(b"half a checkpoint")
    finished = fit(stopped, "--ckpt_path", "last", *signal_at(STEPS, "fit_end", "SIGTERM"))
    return {
        "straight": straight,
        "stopped": stopped,
        "done": done,
        "setup": setup,
        "after_setup": after_setup,
        "term": term,
        "after_term": after_term,
        "int": resumed,
        "finished": finished,
        "stale": stale,
    }


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


def test_sigterm_before_the_first_step_checkpoints_step_0_and_exits_143(runs):
    setup = runs["setup"]
    assert setup.returncode == 143, setup.stderr[-3000:]
    assert last_line(setup).startswith(
        "stopped by SIGTERM at step 0: checkpoint runs/draft_lv/version_0/checkpoints/last.ckpt;"
    )
    assert "Traceback" not in setup.stderr and "KeyboardInterrupt" not in setup.stderr
    checkpoint = runs["after_setup"]["checkpoint"]
    assert checkpoint["global_step"] == 0
    (pending,) = [v for k, v in checkpoint["callbacks"].items() if "PendingValidation" in k]
    assert pending == {"validation_owed_at_step": 0}  # the base model's, done on resume
    # Nothing half-made: no events file or config of a run that never started.
    files = runs["after_setup"]["files"]
    assert not [f for f in files if f.startswith(("events.", "config"))], files


def test_sigterm_mid_step_finishes_the_step_checkpoints_and_exits_143(runs):
    term = runs["term"]
    assert term.returncode == 143, term.stderr[-3000:]
    line = last_line(term)
    assert line.startswith("stopped by SIGTERM at step 2: checkpoint runs/draft_lv/version_0/")
    assert line.endswith(" --ckpt_path last") and "lightning fit --config" in line
    assert "Traceback" not in term.stderr
    assert "weights_only" not in term.stderr  # Lightning's note on a save that did not say
    assert runs["after_term"]["global_step"] == 2  # the step under way finished
    assert [r[0] for r in rewards(runs["stopped"])][:2] == [1, 2]


def test_sigint_mid_validation_abandons_it_checkpoints_and_exits_130(runs):
    stopped = runs["int"]
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert last_line(stopped).startswith("stopped by SIGINT at step 2: checkpoint ")
    assert "Traceback" not in stopped.stderr + stopped.stdout


def test_sigterm_after_the_last_step_completes_the_run_and_exits_143(runs):
    finished = runs["finished"]
    assert finished.returncode == 143, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    assert last_line(finished) == (
        f"stopped by SIGTERM after the last step ({STEPS}), once the run was complete: "
        "checkpoint runs/draft_lv/version_0/checkpoints/last.ckpt; nothing left to resume"
    )
    from draft_lightning.training.lora_export import fingerprint

    checkpoints = version(runs["stopped"]) / "checkpoints"
    state = torch.load(checkpoints / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == STEPS  # what --ckpt_path last finds: the finished run
    assert fingerprint(lora(runs["stopped"])) == fingerprint(state["state_dict"])
    assert not list(checkpoints.glob("last-v*.ckpt"))  # one last.ckpt, overwritten


def test_resumed_run_equals_the_uninterrupted_one_and_redoes_the_abandoned_validation(runs):
    finished = runs["finished"]
    assert "step 2's validation did not finish; validating it first" in finished.stderr
    # Each command's configuration kept: the first run's, then each resume's beside it.
    configs = sorted(p.name for p in version(runs["stopped"]).glob("config*.yaml"))
    assert configs == ["config-resumed-step=2-2.yaml", "config-resumed-step=2.yaml", "config.yaml"]
    first = (version(runs["stopped"]) / "config.yaml").read_text()  # the first that trained
    assert "where: step" in first and "signal_name: SIGTERM" in first
    assert not runs["stale"].exists()  # deleted as the resumed run started
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


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def refused(done: subprocess.CompletedProcess, expected: str, alone: bool = True) -> None:
    """An `error:` line containing `expected` (`alone`: the only line), exit status 2, no
    traceback."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 or not alone, done.stderr[-3000:]
    assert lines[-1].startswith("error: ") and expected in lines[-1]


def test_refused_resumes_and_predict_leave_the_training_run_as_it_was(
    runs, tmp_path, monkeypatch, capsys
):
    shutil.copytree(runs["straight"] / "runs", tmp_path / "runs")
    before = files(tmp_path / "runs")
    # Refused before the model loads: the checkpoint's LoRA rank is read from the file.
    done = fit(tmp_path, "--ckpt_path", "last", "--model.lora.rank", "4")
    refused(done, "holds a LoRA adapter of rank 8; this config has model.lora.rank=4")
    # Refused once the model is built and the logger has opened its events file (a step to
    # go: a complete run is not resumed at all, see below).
    done = fit(tmp_path, "--ckpt_path", "last", "--model.lora.target_modules", "[to_q, to_k]",
               "--trainer.max_steps", str(STEPS + 1))  # fmt: skip
    refused(done, "ckpt_path: the checkpoint does not fit this model's adapter", alone=False)
    assert files(tmp_path / "runs") == before  # config.yaml, events, hparams, checkpoints
    # The run is complete: resuming it says so and writes nothing (no empty events file).
    from draft_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs/draft_lv.yaml"),
          "--config", str(ROOT / "configs/cpu_tiny.yaml"),
          "--trainer.max_steps", str(STEPS), "--ckpt_path", "last"])  # fmt: skip
    assert capsys.readouterr().err.strip().splitlines() == [
        "nothing left to do: runs/draft_lv/version_0/checkpoints/last.ckpt is at step "
        f"{STEPS} and trainer.max_steps={STEPS}; the run is complete (raise "
        "--trainer.max_steps to train further)"
    ]
    assert files(tmp_path / "runs") == before
    predicted = fit(tmp_path, "--ckpt_path", "last", command="predict")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    after = files(tmp_path / "runs")
    assert {k: v for k, v in after.items() if k.startswith("draft_lv/version_0/")} == before
    assert any(k.startswith("draft_lv/version_1/predictions/") for k in after)
    assert "draft_lv/version_1/config.yaml" in after


WEIGHTED_NAN = """
model:
  reward:
    class_path: draft_lightning.rewards.WeightedSum
    init_args:
      rewards: [{class_path: draft_lightning.rewards.Brightness}]
      weights: [.nan]
"""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.optimizer.init_args.lr", "-0.1"],
         "model.optimizer.init_args.lr=-0.1: must be a number >= 0"),
        (["--model.optimizer.init_args.betas", "[0.9, 1.0]"],
         "model.optimizer.init_args.betas=(0.9, 1.0): must be two numbers in [0, 1)"),
        (["--config", "weighted_nan.yaml"],  # YAML's .nan: a float that is not a number
         "WeightedSum weights=[nan]: each weight must be finite"),
        (["--model.reward", "draft_lightning.rewards.JPEGCompressibility",
          "--model.reward.quality", "101"],
         "JPEGCompressibility quality=101: must be an integer in 1..100"),
        (["--model.reward", "draft_lightning.rewards.Brightnes"],
         "model.reward=draft_lightning.rewards.Brightnes: no such class; known reward classes: "),
        # On the command line jsonargparse refuses these itself, in hundreds of characters
        # (and `lr nan` once made the unknown-class shortener fail with a traceback).
        (["--model.reward", "draft_lightning.rewards.WeightedSum",
          "--model.reward.init_args.rewards", "[{class_path: draft_lightning.rewards.Brightness}]",
          "--model.reward.init_args.weights", "[.nan]"],
         "model.reward.init_args.weights=[nan]: must be finite numbers (not NaN or infinity)"),
        (["--model.optimizer.init_args.lr", "nan"],
         "model.optimizer.init_args.lr=nan: must be a finite number (not NaN or infinity)"),
        (["--model.optimizer.init_args.lr", "abc"],
         "model.optimizer.init_args.lr=abc: must be a finite number"),
        (["--trainer.max_steps", "2.5"], "trainer.max_steps=2.5: must be an integer"),
        (["--lora_export.formats", "[diffusers, ckpt]"],
         "lora_export.formats=[diffusers, ckpt]: must be one of diffusers, kohya"),
        # Lightning takes it and divides by it at the first step, its folder made.
        (["--trainer.accumulate_grad_batches", "0"],
         "trainer.accumulate_grad_batches=0: must be an integer >= 1"),
        # Lightning's own check (a MisconfigurationException, once a traceback).
        (["--checkpoint.every_n_train_steps", "-1"],
         "error: Invalid value for every_n_train_steps=-1. Must be >= 0"),
        # Refused as the config is parsed, not in setup once the version folder exists.
        (["--model.pretrained_model", "tiny:flux", "--lora_export.formats", "[kohya]"],
         "lora_export.formats=['kohya'] has kohya, which is for SD 1.x/2.x and SDXL; this "
         "model is FLUX.1: use [diffusers]"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_in_one_line_before_anything_is_written(
    tmp_path, monkeypatch, capsys, args, expected
):
    from draft_lightning.cli import main

    (tmp_path / "weighted_nan.yaml").write_text(WEIGHTED_NAN)
    monkeypatch.chdir(tmp_path)  # in-process: the command's entry point, without the imports
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(ROOT / "configs/draft_lv.yaml"),
              "--config", str(ROOT / "configs/cpu_tiny.yaml"), *args])  # fmt: skip
    errors = capsys.readouterr().err.strip().splitlines()
    refused(subprocess.CompletedProcess([], stop.value.code, "", "\n".join(errors)), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["weighted_nan.yaml"]  # no log folder


@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_the_command_builds_its_classes_stops_it_in_one_line(
    tmp_path, monkeypatch, capsys, name, status
):
    import signal

    from draft_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(ROOT / "configs/draft_lv.yaml"),
              "--config", str(ROOT / "configs/cpu_tiny.yaml"),
              "--model.reward", "plugins.faults.SignalWhenBuilt",
              "--model.reward.signal_name", name])  # fmt: skip
    assert stop.value.code == status
    assert capsys.readouterr().err.strip().splitlines() == [
        f"stopped by {name} before training started: nothing to resume; run the command again"
    ]
    assert list(tmp_path.iterdir()) == []  # no version folder
    assert {s: signal.getsignal(s) for s in before} == before  # handed back


def test_a_signal_after_a_finished_fit_hands_back_says_the_run_is_complete():
    import signal

    from draft_lightning.cli import interrupted_line
    from draft_lightning.training.stop_signals import CommandSignals, RunInterrupted

    with pytest.raises(RunInterrupted) as stop, CommandSignals() as command:
        # What StopOnSignal.teardown leaves once fit has ended (a later signal: this one).
        command.finished = RunInterrupted(signal.SIGTERM, 4, Path("c/last.ckpt"), when="end")
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.exit_status == 130
    assert interrupted_line(stop.value, ["lightning", "fit"]) == (
        "stopped by SIGINT after the last step (4), once the run was complete: checkpoint "
        "c/last.ckpt; nothing left to resume"
    )


def test_checkpoints_and_exports_get_the_mode_the_umask_allows(tmp_path):
    from draft_lightning.models.lora import write_folder_atomically
    from draft_lightning.training.checkpoint_io import AtomicCheckpointIO

    previous = os.umask(0o027)  # group may read, others nothing
    try:
        AtomicCheckpointIO().save_checkpoint({"step": torch.zeros(1)}, tmp_path / "last.ckpt")
        write_folder_atomically(tmp_path / "lora", lambda tmp: (tmp / "w.bin").write_bytes(b"1"))
    finally:
        os.umask(previous)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    assert (tmp_path / "lora").stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700
    assert (tmp_path / "lora" / "w.bin").stat().st_mode & 0o777 == 0o640


def lora_trainer(root: Path, max_steps: int, checkpoint_io):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from draft_lightning.training.lora_export import LoraExport

    return Trainer(
        accelerator="cpu", max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, default_root_dir=root, enable_progress_bar=False,
        enable_model_summary=False, plugins=[checkpoint_io],
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=1,
                                   save_last=True, save_top_k=0),
                   LoraExport(model_card=False)],
    )  # fmt: skip


def test_lora_last_is_never_ahead_of_last_ckpt_and_a_resume_catches_it_up(
    tiny_sd, tmp_path, monkeypatch
):
    from conftest import make_module

    from draft_lightning.data import PromptDataModule
    from draft_lightning.training import checkpoint_io
    from draft_lightning.training.lora_export import fingerprint

    def exported(name: str):
        return fingerprint(load_file(tmp_path / "lora" / name / "pytorch_lora_weights.safetensors"))

    def in_checkpoint():
        state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
        return fingerprint(state["state_dict"])

    saves, real_save = [], torch.save

    def dies_on_the_second_save(obj, file):
        saves.append(obj["global_step"])
        if len(saves) == 2:
            raise RuntimeError("killed mid-save")
        real_save(obj, file)

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_on_the_second_save)
    module = make_module()
    with pytest.raises(RuntimeError, match="killed mid-save"):
        lora_trainer(tmp_path, 3, checkpoint_io.AtomicCheckpointIO()).fit(
            module, PromptDataModule(batch_size=2)
        )
    monkeypatch.undo()
    assert saves == [1, 2]
    assert exported("last") == in_checkpoint() == exported("step=1")  # not step 2's weights
    assert not (tmp_path / "lora" / "step=2").exists()
    assert list((tmp_path / "checkpoints").glob(".last.ckpt.tmp-*")) == []  # removed on error

    # A kill between checkpoint and export leaves lora/last behind last.ckpt; the resumed
    # run exports before its first step (which dies here at once).
    last = tmp_path / "checkpoints" / "last.ckpt"
    lora_trainer(tmp_path, 2, checkpoint_io.AtomicCheckpointIO()).fit(
        make_module(), PromptDataModule(batch_size=2), ckpt_path=last
    )
    assert exported("last") == in_checkpoint() == exported("step=2") != exported("step=1")
    shutil.rmtree(tmp_path / "lora" / "last")
    shutil.copytree(tmp_path / "lora" / "step=1", tmp_path / "lora" / "last")
    trainer = lora_trainer(tmp_path, 3, checkpoint_io.AtomicCheckpointIO())
    trainer.callbacks.insert(0, DieAtFirstBatch())
    with pytest.raises(RuntimeError, match="killed"):
        trainer.fit(make_module(), PromptDataModule(batch_size=2), ckpt_path=last)
    assert exported("last") == in_checkpoint() == exported("step=2")


def test_a_run_ends_with_last_ckpt_at_its_last_step_with_the_validation_done(tiny_sd, tmp_path):
    """Lightning writes last.ckpt at step 2 before step 2's validation: resumed, that one
    would validate step 2 again; the run's own last save comes after it."""
    from conftest import make_module
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from draft_lightning.data import PromptDataModule
    from draft_lightning.training.pending_validation import PendingValidation
    from draft_lightning.training.stop_signals import StopOnSignal

    last = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True, save_top_k=0)
    trainer = Trainer(
        accelerator="cpu", max_steps=2, val_check_interval=2, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, default_root_dir=tmp_path,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[StopOnSignal(), PendingValidation(), last],
    )  # fmt: skip
    trainer.fit(make_module(), PromptDataModule(batch_size=2, num_val_prompts=2, num_val_seeds=1))
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2
    assert state["callbacks"]["PendingValidation"] == {"validation_owed_at_step": None}
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt"]


class DieAtFirstBatch(Callback):
    def on_train_batch_start(self, *args) -> None:
        raise RuntimeError("killed")


def test_a_write_a_signal_interrupts_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import signal

    from draft_lightning.training import run_files
    from draft_lightning.training.stop_signals import RunInterrupted

    (tmp_path / "config.yaml").write_bytes(b"old")

    def signal_arrives(*args):
        raise RunInterrupted(signal.SIGTERM, None, None, when="start")

    monkeypatch.setattr(run_files.os, "replace", signal_arrives)
    with pytest.raises(RunInterrupted):
        run_files.write_atomically(tmp_path / "config.yaml", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    assert (tmp_path / "config.yaml").read_bytes() == b"old"


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    from draft_lightning.training.run_files import remove_stale_temporaries

    keep = [tmp_path / "checkpoints" / "last.ckpt", tmp_path / "lora" / "last" / "w.safetensors"]
    stale = [tmp_path / "checkpoints" / ".last.ckpt.tmp-x1y2", tmp_path / "lora" / ".last.old-7"]
    for path in keep + [stale[0], stale[1] / "w.safetensors"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"1")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


@pytest.mark.parametrize("replaced", ["python's default", "ignored"])
def test_after_the_run_a_leftover_handler_behaves_as_the_one_it_replaced(replaced):
    import signal

    from draft_lightning.training.stop_signals import StopOnSignal

    # What the run replaced is whatever the process started with: Python's KeyboardInterrupt,
    # or SIG_IGN where a shell started it in the background (nohup, `cmd &` in a script).
    before = signal.SIG_IGN if replaced == "ignored" else signal.default_int_handler
    inherited = signal.signal(signal.SIGINT, before)
    try:
        stop = StopOnSignal()
        stop.active = True
        stop._install()  # as in a run; Lightning's teardown may leave it installed afterwards
        stop._restore()
        signal.signal(signal.SIGINT, stop._handler)
        if replaced == "ignored":
            os.kill(os.getpid(), signal.SIGINT)  # ignored, as before the run
        else:
            with pytest.raises(KeyboardInterrupt):  # Ctrl+C works again, e.g. in a notebook
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is before
        assert stop.received is None
    finally:
        signal.signal(signal.SIGINT, inherited)
