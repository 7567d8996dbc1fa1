"""Running the installed `lightning` console script on the tiny model, as a user would."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Few sampling steps, no validation, metrics as CSV in the run's working folder.
QUICK = [
    "--model.sampling.num_steps", "4",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.limit_val_batches", "0",
    "--trainer.enable_progress_bar", "false",
    "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
    "--trainer.logger.init_args.save_dir", "logs",
]  # fmt: skip


def lightning_fit(
    configs: list[Path], args: list[str], cwd: Path, pythonpath: Path | None = None
) -> subprocess.CompletedProcess:
    """`lightning fit --config ... <args>` in `cwd`, offline, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    command = [str(Path(sys.executable).parent / "lightning"), "fit"]
    for config in configs:
        command += ["--config", str(config)]
    return subprocess.run(
        [*command, *QUICK, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def logged_rows(cwd: Path) -> list[dict[str, str]]:
    """Rows of the run's metrics.csv that carry a training reward."""
    (metrics,) = (cwd / "logs").glob("*/version_0/metrics.csv")
    with open(metrics, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("train/reward")]


def quiet_trainer(max_steps: int):
    """A CPU Trainer for `max_steps` with no logger, checkpoints, progress bar or validation."""
    from lightning.pytorch import Trainer

    return Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
