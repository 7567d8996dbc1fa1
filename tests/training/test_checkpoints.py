"""Checkpoints: contents and size, atomic writes, RNG states, and the non-finite guard."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_module
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from draft_lightning.data import PromptDataModule
from draft_lightning.rewards import Brightness
from draft_lightning.training.checkpoint_io import AtomicCheckpointIO
from draft_lightning.training.nonfinite_guard import NonFiniteError, NonFiniteGuard


class NaNAt(Brightness):
    """Brightness, but NaN on chosen training calls (counted from 0)."""

    def __init__(self, bad_calls: set[int], from_call: int | None = None) -> None:
        super().__init__(name="brightness")
        self.bad_calls = bad_calls
        self.from_call = from_call
        self.calls = 0

    def forward(self, images, prompts):
        scores = super().forward(images, prompts)
        call, self.calls = self.calls, self.calls + 1
        if call in self.bad_calls or (self.from_call is not None and call >= self.from_call):
            scores = scores * float("nan")
        return scores


class RecordLora(Callback):
    def __init__(self):
        self.after_step = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        flat = torch.cat([p.detach().flatten() for p in pl_module.trainable_parameters()])
        self.after_step.append(flat.clone())


def trainer(tmp_path, max_steps, callbacks):
    return Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_nonfinite_steps_are_skipped_counted_and_leave_weights_unchanged(tiny_sd, tmp_path):
    module = make_module(reward=NaNAt({2, 3}))
    record, guard = RecordLora(), NonFiniteGuard(patience=3)
    trainer(tmp_path, 6, [record, guard]).fit(module, PromptDataModule(batch_size=2))
    steps = record.after_step
    assert len(steps) == 6 and guard.skipped == 2
    assert torch.equal(steps[1], steps[2]) and torch.equal(steps[2], steps[3])  # skipped
    assert not torch.equal(steps[3], steps[4]) and not torch.equal(steps[0], steps[1])
    assert torch.isfinite(steps[-1]).all()
    assert guard.state_dict() == {"skipped": 2, "in_a_row": 0}


def test_too_many_nonfinite_steps_stop_the_run_with_a_loadable_checkpoint(tiny_sd, tmp_path):
    module = make_module(reward=NaNAt(set(), from_call=2))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    # Calls 2, 3, 4 are steps 3, 4, 5 as the logs and checkpoints number them.
    with pytest.raises(NonFiniteError, match=r"steps 3 to 5 \(3 in a row, patience=3\)") as error:
        trainer(tmp_path, 20, [NonFiniteGuard(patience=3), checkpoints]).fit(
            module, PromptDataModule(batch_size=2)
        )
    assert "\n" not in str(error.value)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_checkpoint_holds_lora_optimiser_and_rng_only(tiny_sd, tmp_path):
    module = make_module()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, 2, [checkpoints]).fit(module, PromptDataModule(batch_size=2))
    path = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(path, weights_only=True)  # loads without unpickling arbitrary objects
    lora_names = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(state["state_dict"]) == lora_names
    lora_bytes = sum(p.numel() * 4 for p in module.trainable_parameters())
    # LoRA weights + AdamW's two moments + names, loop state and RNG states (small).
    assert path.stat().st_size < 3 * lora_bytes + 160_000
    frozen_bytes = sum(
        p.numel() * 4 for p in module.pipeline.denoiser.parameters() if not p.requires_grad
    )
    assert path.stat().st_size < frozen_bytes / 4
    assert {"torch", "numpy", "python"} <= set(state["rng_states"][0])


def test_rng_states_round_trip():
    import random

    import numpy as np

    from draft_lightning.randomness import collect_rng_states, restore_rng_states

    states = collect_rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert (expected[1] == again[1]).all() and expected[2] == again[2]


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(
        f"""
        import time, torch
        from draft_lightning.training.checkpoint_io import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"step": torch.tensor(1)}}, {str(path)!r})
        def slow_save(obj, file):
            file.write(b"half a checkpoint" * 4096)
            file.flush()
            print("WRITING", flush=True)
            time.sleep(120)
        torch.save = slow_save
        io.save_checkpoint({{"step": torch.tensor(2)}}, {str(path)!r})
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "WRITING"
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -9
    assert int(torch.load(path, weights_only=True)["step"]) == 1
