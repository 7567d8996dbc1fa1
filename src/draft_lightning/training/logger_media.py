"""Images, histograms and a run's settings through whatever loggers a Trainer has.

Lightning's `log_metrics` carries scalars to every logger it ships; pictures and
distributions each logger takes its own way (or not at all), and Lightning has no common
call for them. This is that call, so callbacks hand over a tensor and a tag and never ask
which logger is there:

| logger | images | histograms | settings |
|---|---|---|---|
| TensorBoardLogger | `add_image` | `add_histogram` | one hparams record, final metrics as columns |
| WandbLogger | `log_image` | `wandb.Histogram` | run config |
| MLFlowLogger | `MlflowClient.log_image` (per step) | - (MLflow has none) | params |
| CSVLogger and any other | PNG files under `<log_dir>/images/` | - | `log_hyperparams` |

Everything here runs on global rank 0 only and never waits on other ranks.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from draft_lightning.training.run_files import run_dir, write_atomically

IMAGE_FOLDER = "images"


def log_image(trainer: Trainer, tag: str, image: torch.Tensor, step: int) -> None:
    """One picture ([3, H, W] uint8) under `tag` at `step`, to every logger of the run."""
    if not trainer.is_global_zero:
        return
    image = image.detach().to(torch.uint8).cpu()
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[to_pil(image)], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, to_pil(image), key=tag, step=step)
        else:
            write_image_file(image_path(trainer, logger, tag, step), image)


def log_histogram(trainer: Trainer, tag: str, values: torch.Tensor, step: int) -> None:
    """The distribution of `values` under `tag` at `step`, to every logger that has a
    histogram view (TensorBoard, W&B); the others have no place for one."""
    if not trainer.is_global_zero:
        return
    values = values.detach().float().cpu().flatten()
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram(tag, values, step)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics({tag: wandb.Histogram(values.numpy())}, step=step)


def log_run_settings(
    trainer: Trainer,
    params: dict[str, Any],
    metric_tags: list[str],
    headline: tuple[str, ...] = (),
) -> None:
    """The run's settings, once, to every logger. TensorBoard gets one hparams record whose
    metric columns are `metric_tags`: its HParams tab reads each column's value from the
    last point of that scalar curve, so the table shows the run's final metrics (and the
    latest ones while it trains), with no placeholder values written into the curves. Its
    table opens with five settings: the `headline` ones."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            log_tensorboard_hparams(logger, params, metric_tags, headline)
        else:
            logger.log_hyperparams(params)


def log_tensorboard_hparams(
    logger: TensorBoardLogger,
    params: dict[str, Any],
    metric_tags: list[str],
    headline: tuple[str, ...] = (),
) -> None:
    # Lightning's log_hyperparams would also write each metric at step 0 (or hp_metric = -1),
    # a false first point on every validation curve; the three hparams summaries are
    # written here directly instead, with the same helper Lightning uses.
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams

    logger.hparams.update(params)  # hparams.yaml beside the event files
    experiment, start, end = hparams(params, dict.fromkeys(metric_tags, 0.0))
    # TensorBoard shows the first five settings, those marked `differs` first (it computes
    # that mark only for runs without this summary): the headline settings get it.
    plugin_data = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in headline
    plugin_data.content = data.SerializeToString()
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.flush()


def image_path(trainer: Trainer, logger: Logger, tag: str, step: int) -> Path:
    """`<log_dir>/images/<tag, / as _>/step=<step>.png` of a logger without an image view."""
    folder = Path(logger.log_dir) if getattr(logger, "log_dir", None) else run_dir(trainer)
    return folder / IMAGE_FOLDER / tag.replace("/", "_") / f"step={step}.png"


def write_image_file(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, png_bytes(image))


def png_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def to_pil(image: torch.Tensor):
    """[3, H, W] uint8 -> a PIL image (what W&B and MLflow take without rescaling)."""
    from PIL import Image

    return Image.fromarray(image.permute(1, 2, 0).numpy())
