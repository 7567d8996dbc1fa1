"""Where a run's files go, and writing them so a reader never sees half a file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lightning.pytorch import Trainer


def run_dir(trainer: Trainer) -> Path:
    """Where a run's artefacts go: the logger's version folder, else the root dir."""
    if trainer.logger is not None and trainer.logger.log_dir:
        return Path(trainer.logger.log_dir)
    return Path(trainer.default_root_dir)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all; an interrupted write (an error, a signal's
    RunInterrupted) leaves no temporary behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what atomic writes left behind in `folder` when a process died mid-write (the
    `.<name>.tmp-*` file or folder that was never renamed into place, the `.<name>.old-*` one
    never deleted); call it before this run writes anything there. Returns what went."""
    stale = [p for pattern in (".*.tmp-*", ".*.old-*") for p in folder.rglob(pattern)]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
