"""Checkpoint writes that a kill cannot corrupt."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from draft_lightning.file_modes import as_if_created


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside its target, fsync, then rename.

    Lightning's own save goes through fsspec, whose local "transaction" writes to the system
    temp folder and then moves the file: a copy, not an atomic rename, whenever that folder
    is on another filesystem than the run (the usual case on clusters), so a job killed
    mid-save can leave a truncated last.ckpt. A rename within one folder is atomic.
    Loading stays Lightning's (weights_only where Lightning asks for it).

    `after_save` callables run with the path once a file is in place: what must never be
    ahead of the checkpoint (the exported LoRA, LoraExport) is written then.
    """

    def __init__(self) -> None:
        super().__init__()
        self.after_save: list[Callable[[Path], None]] = []

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        path = Path(path)
        if "://" in str(path):  # remote filesystems: keep Lightning's fsspec path
            super().save_checkpoint(checkpoint, path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        as_if_created(tmp)  # not mkstemp's 0600: readable as far as the umask allows
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for hook in self.after_save:
            hook(path)
