"""Where `make toy` puts its outputs, and how a finished folder replaces an old one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from draft_lightning.errors import ModelUnavailableError
from draft_lightning.tiny import _cache_root

MODEL_FOLDER = "toy-sd"
CLASSIFIER_FOLDER = "toy-classifier"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """$DRAFT_LIGHTNING_CACHE (default ~/.cache/draft_lightning), as for the tiny model."""
    return _cache_root(cache_dir)


def default_model_path(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / MODEL_FOLDER


def default_classifier_path(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / CLASSIFIER_FOLDER


def toy_sd_path(cache_dir: str | Path | None = None) -> Path:
    """The pretrained toy model folder; one line saying how to make it if it is missing."""
    folder = default_model_path(cache_dir)
    if not (folder / "model_index.json").is_file():
        raise ModelUnavailableError(
            f"the toy model is not at {folder}: run `make toy` (about 15 minutes on a CPU)"
        )
    return folder


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to write into; on success it replaces `target`.

    Readers never see a half-written folder: the finished folder is renamed into place (an
    older one is first renamed aside, then deleted). On failure the temporary is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
