"""Where `make toy` puts its outputs, and how a finished folder replaces an old one."""

from __future__ import annotations

from pathlib import Path

from draft_lightning.cache import atomic_folder, cache_root
from draft_lightning.errors import ModelUnavailableError

__all__ = ["atomic_folder", "cache_root", "default_classifier_path", "default_model_path"]

MODEL_FOLDER = "toy-sd"
CLASSIFIER_FOLDER = "toy-classifier"


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
