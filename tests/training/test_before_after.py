"""BeforeAfter: the base model's step-0 samples against each later evaluation, as
`val/comparison` in every logger and as one PNG whose path the run summary prints."""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from conftest import make_module
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from draft_lightning.data import PromptDataModule
from draft_lightning.evaluation.comparison import comparison_grid
from draft_lightning.training.before_after import BeforeAfter
from draft_lightning.training.run_summary import RunSummary


def fit(logger, callbacks, max_steps=4):
    torch.manual_seed(0)
    module = make_module()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=-1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, PromptDataModule(batch_size=2, num_val_prompts=3, num_val_seeds=1))
    return module


def test_comparison_is_logged_written_and_printed(tiny_sd, tmp_path, caplog):
    logger = TensorBoardLogger(tmp_path, name="run")
    comparison = BeforeAfter(cell_size=32)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):  # make toy lowers it
        module = fit(logger, [comparison, RunSummary()])
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("val/comparison")] == [2, 4]  # not at the base's 0
    written = np.asarray(Image.open(comparison.written))
    assert comparison.written == tmp_path / "run" / "version_0" / "comparison.png"
    logged = np.asarray(
        Image.open(io.BytesIO(events.Images("val/comparison")[-1].encoded_image_string))
    )
    assert np.array_equal(written, logged)  # the file is the last logged grid
    expected = comparison_grid(comparison.base, module.last_evaluation, cell_size=32)
    assert np.array_equal(written, expected.permute(1, 2, 0).numpy())
    # The kept base samples are the step-0 evaluation's: their mean is val/reward at step 0.
    (first_step, first), *_ = module.eval_history
    base_rewards = [s["reward"] for s in comparison.base["scores"]]
    assert first_step == 0 and np.isclose(np.mean(base_rewards), first["val/reward"], atol=1e-6)
    assert written.shape[1] == 3 * 32  # one column per validation prompt
    lines = [r.getMessage() for r in caplog.records]
    reward_line = next(i for i, line in enumerate(lines) if line.startswith("val/reward:"))
    assert lines[reward_line + 1] == f"before/after picture: {comparison.written}"


def test_other_loggers_get_the_comparison_as_files_and_the_base_survives_a_checkpoint(
    tiny_sd, tmp_path
):
    logger = CSVLogger(tmp_path, name="csv")
    comparison = BeforeAfter(cell_size=32, filename=None)
    fit(logger, [comparison], max_steps=2)
    folder = tmp_path / "csv" / "version_0" / "images" / "val_comparison"
    assert sorted(p.name for p in folder.iterdir()) == ["step=2.png"]
    assert comparison.written is None
    buffer = io.BytesIO()
    torch.save(comparison.state_dict(), buffer)
    buffer.seek(0)
    restored = BeforeAfter()
    restored.load_state_dict(torch.load(buffer, weights_only=True))  # checkpoints load so
    assert restored.base["prompts"] == comparison.base["prompts"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(restored.base["thumbnails"], comparison.base["thumbnails"], strict=True)
    )
