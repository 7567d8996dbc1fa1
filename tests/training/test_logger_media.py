"""Images, histograms and the run's settings through loggers other than TensorBoard: CSV
(images as files), W&B in offline mode, MLflow with a local file store. The W&B and
MLflow tests need their packages (the dev extras)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import make_module
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from draft_lightning.data import PromptDataModule
from draft_lightning.rewards import Brightness, Colorfulness, WeightedSum
from draft_lightning.training.logger_media import log_histogram, log_image, log_run_settings
from draft_lightning.training.monitoring import RunMonitor

CELL = 48


def fit(loggers, max_steps=2):
    """Two steps, evaluated at step 0 (the base model) and step 2."""
    torch.manual_seed(0)
    module = make_module(reward=WeightedSum([Brightness(), Colorfulness()]))
    monitor = RunMonitor(cell_size=CELL, histogram_every_n_steps=1)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=-1,
        log_every_n_steps=1,
        logger=loggers,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, PromptDataModule(batch_size=2, num_val_prompts=2, num_val_seeds=2))
    return module, monitor


def test_csv_logger_gets_curves_settings_and_images_as_files(tiny_sd, tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    module, monitor = fit(logger)
    folder = tmp_path / "csv" / "version_0"
    pictures = sorted((folder / "images" / "val_images").iterdir())
    assert [p.name for p in pictures] == ["step=0.png", "step=2.png"]
    last = Image.open(pictures[-1])
    assert last.format == "PNG"
    assert torch.equal(
        torch.from_numpy(np.asarray(last)).permute(2, 0, 1),
        monitor.grid(module.last_evaluation),
    )
    settings = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert settings["estimator"] == "DraftK(k=1)" and settings["estimator.k"] == 1
    assert settings["reward"] == "brightness + colorfulness"
    assert "_instantiator" not in settings and "num_val_seeds" not in settings
    header = (folder / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/reward", "val/reward_gain", "train/reward_std"} <= set(header)


def test_wandb_offline_gets_images_histograms_and_settings(tiny_sd, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=tmp_path, offline=True, project="draft-lightning-test")
    module, monitor = fit(logger)
    import wandb

    wandb.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    pictures = sorted((run / "files" / "media" / "images" / "val").glob("images_*.png"))
    assert len(pictures) == 2  # step 0 and step 2
    sizes = {Image.open(p).size for p in pictures}
    grid = monitor.grid(module.last_evaluation)
    assert sizes == {(grid.shape[2], grid.shape[1])}
    # The run file is wandb's own binary log (read by its Go core, no Python reader): the
    # histogram and settings records are found by their keys.
    (records,) = run.glob("run-*.wandb")
    data = records.read_bytes()
    for key in (b"train/reward_hist", b"val/brightness_hist", b"histogram", b"estimator.k"):
        assert key in data, key


def test_mlflow_gets_images_per_step_and_settings(tmp_path, monkeypatch):
    """The MLflow route into a real MlflowClient (local file store). A whole run is not
    logged: MLflow's file store cannot hold val/reward beside val/reward/<name> (a file
    and a folder of one name); a database or server store can (docs/tensorboard.md)."""
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(experiment_name="draft", tracking_uri=(tmp_path / "mlruns").as_uri())
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger])
    images = [torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8) for _ in range(2)]
    for step, image in zip((0, 5), images, strict=True):
        log_image(trainer, "val/images", image, step)
    log_histogram(trainer, "val/reward_hist", torch.rand(5), 5)  # MLflow has no histograms
    log_run_settings(trainer, {"estimator": "DraftK", "lr": 1e-3}, ["val/reward"])
    client, run_id = logger.experiment, logger.run_id
    assert client.get_run(run_id).data.params == {"estimator": "DraftK", "lr": "0.001"}
    folder = Path(client.download_artifacts(run_id, "images", str(tmp_path / "download")))
    for step, image in zip((0, 5), images, strict=True):
        (png,) = folder.glob(f"val~images+step+{step}+*[0-9a-f].png")
        assert torch.equal(torch.from_numpy(np.asarray(Image.open(png))).permute(2, 0, 1), image)
