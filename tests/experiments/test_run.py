"""The diversity measurement of the experiments, on the tiny model: strength 0 must be the base
model whatever the adapter learned, since the report uses it as the base model's point."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from experiments import run
from experiments.settings import RunSpec, smoke


def test_unconditional_samples_at_strength_zero_are_the_base_model():
    settings = smoke()
    module = run.build_module(settings, RunSpec("DRaFT-1", 0, num_steps=settings.num_steps))
    base = run.unconditional_samples(module, settings, 0.0)
    assert base == run.unconditional_samples(module, settings, 1.0)  # B = 0: nothing learned
    with torch.no_grad():
        for name, parameter in module.pipeline.denoiser.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5 * torch.randn_like(parameter))
    assert run.unconditional_samples(module, settings, 0.0) == base
    trained = run.unconditional_samples(module, settings, 1.0)
    assert trained["diversity"] != base["diversity"] and trained["reward"] != base["reward"]
    assert base["diversity"] > 0  # distinct seeds give distinct images
    # Training resumes at full strength.
    assert module.lora_scale == 1.0


def test_caption_agreement_reads_rendered_truth_as_shown_and_one_image_for_all_as_lost():
    """Amendment 1's caption agreement: the judge on stored samples, per run."""
    import base64

    from draft_lightning.toy import world
    from experiments.report import OTHER_ATTRIBUTES, caption_agreement

    scenes = world.scenes(seed=7, indices=range(16))
    truth = (world.render(scenes) * 255).round().to(torch.uint8)
    one_for_all = truth[:1].expand_as(truth).contiguous()  # the same picture for every caption

    def stored(images: torch.Tensor) -> dict:
        raw = base64.b64encode(images.numpy().tobytes()).decode()
        return {"prompts": [s.caption for s in scenes], "shape": list(images.shape), "pixels": raw}

    runs = [{"samples": {"base": stored(truth), "final": stored(one_for_all)}}]
    [shown], [collapsed] = caption_agreement(runs, "base"), caption_agreement(runs, "final")
    assert set(shown) == set(OTHER_ATTRIBUTES)
    assert min(shown.values()) > 0.9, shown
    assert max(collapsed[a] for a in ("colour", "background")) < 0.6, collapsed


class Cut(Exception):
    """Stands for SIGKILL: the run stops after a step, before that step's checkpoint."""


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec("DRaFT-1", 0, num_steps=4, budget=4, val_every=2, track_diversity=True),
        RunSpec("DDPO", 0, num_steps=4, budget=3, val_every=1, ddpo_lr=1e-2, ddpo_clip=1e-3),
    ],
    ids=["DRaFT-1", "DDPO"],
)
def test_a_run_cut_short_resumes_with_the_records_of_an_uninterrupted_run(
    spec, tmp_path, monkeypatch
):
    """A run of hours must survive the end of a session. Killed after its third step (the
    checkpoint of the second was written before that step's validation, which the resume
    must redo), or sent SIGTERM during its second (it stops at the step's end with a
    checkpoint and the signal's exit status), then resumed, it ends with the records,
    adapter and samples of a run never stopped."""
    from draft_lightning.training.stop_signals import RunInterrupted
    from experiments.recorder import Recorder

    settings = smoke()
    monkeypatch.setattr(run, "commit", lambda: "abc1234")
    monkeypatch.setattr(run, "code_fingerprint", lambda: "code-a")
    straight = run.train(settings, spec)
    recorded = Recorder.on_train_batch_end

    def stopping(after: int, stop):
        def on_train_batch_end(self, trainer, *args):
            recorded(self, trainer, *args)
            if len(self.train) == after:
                stop()

        return on_train_batch_end

    def kill():
        raise Cut

    def sigterm():
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the step ends, then the run stops

    def timeless(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    for name, after, stop, expected in (("kill", 3, kill, Cut), ("term", 2, sigterm, None)):
        folder = tmp_path / name
        monkeypatch.setattr(Recorder, "on_train_batch_end", stopping(after, stop))
        with pytest.raises(expected or RunInterrupted) as stopped:
            run.train(settings, spec, folder)
        monkeypatch.setattr(Recorder, "on_train_batch_end", recorded)
        if expected is None:
            assert stopped.value.exit_status == 143 and stopped.value.checkpoint is not None
        assert run.resumable(folder, "code-a") == folder / "last.ckpt"
        assert run.resumable(folder, "code-b") is None  # other code: start afresh

        # A commit that changes no code (the notes, the report) resumes the run, which keeps
        # the commit it started with.
        monkeypatch.setattr(run, "commit", lambda: "def5678")
        resumed = run.train(settings, spec, folder)
        monkeypatch.setattr(run, "commit", lambda: "abc1234")
        assert resumed["resumed"] and not straight["resumed"]
        assert timeless(resumed["train"]) == timeless(straight["train"]), name
        assert timeless(resumed["val"]) == timeless(straight["val"]), name
        assert resumed["samples"] == straight["samples"], name
        assert resumed["unconditional"] == straight["unconditional"], name
        assert resumed["commit"] == "abc1234"


def test_the_code_fingerprint_follows_the_code_a_run_executes_not_the_report(tmp_path, monkeypatch):
    """A run resumes only with the code it started with; a change to what only writes the
    report (or to anything outside the code) keeps it resumable."""
    import shutil

    driver = tmp_path / "experiments"
    shutil.copytree(Path(run.__file__).parent, driver)
    monkeypatch.setattr(run, "__file__", str(driver / "run.py"))
    before = run.code_fingerprint()
    (driver / "report.py").write_text((driver / "report.py").read_text() + "\n# reworded\n")
    (tmp_path / "notes.md").write_text("read after the runs")
    assert run.code_fingerprint() == before
    (driver / "methods.py").write_text((driver / "methods.py").read_text() + "\nX = 1\n")
    assert run.code_fingerprint() != before
