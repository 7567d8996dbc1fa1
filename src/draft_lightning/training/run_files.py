"""Where a run's files go, and writing them so a reader never sees half a file."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Trainer


def run_dir(trainer: Trainer) -> Path:
    """Where a run's artefacts go: the logger's version folder, else the root dir."""
    if trainer.logger is not None and trainer.logger.log_dir:
        return Path(trainer.logger.log_dir)
    return Path(trainer.default_root_dir)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
