"""Where the toy world's trained parts are: what `make toy` wrote to the cache, or the copy
shipped inside the package (toy/pretrained/, see shipped.py), whichever is newer.

`toy:sd`, ToyAttributeReward's `classifier: null` and ToyJudgeReward's `judge: null` all
resolve here, so a fresh install runs the demo on the shipped model and a later `make toy`
takes over without any config change.
"""

from __future__ import annotations

import json
from pathlib import Path

from draft_lightning.cache import atomic_folder, cache_root
from draft_lightning.errors import ModelUnavailableError

__all__ = [
    "atomic_folder",
    "cache_root",
    "default_classifier_path",
    "default_judge_path",
    "default_model_path",
    "toy_classifier_path",
    "toy_judge_path",
    "toy_sd_path",
]

MODEL_FOLDER = "toy-sd"
CLASSIFIER_FOLDER = "toy-classifier"
JUDGE_FOLDER = "toy-judge"
# The file whose presence says a folder is complete (folders are written atomically).
MARKERS = {
    MODEL_FOLDER: "model_index.json",
    CLASSIFIER_FOLDER: "config.json",
    JUDGE_FOLDER: "config.json",
}
SHIPPED_ROOT = Path(__file__).parent / "pretrained"
MANIFEST_FILE = "MANIFEST.json"
# `make toy`'s time, as the README, the Makefile and docs/toy.md state it (docs/toy.md: how
# it was measured).
MAKE_TOY_TIME = "about 13 minutes on a quiet 2-core CPU"


def default_model_path(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / MODEL_FOLDER


def default_classifier_path(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / CLASSIFIER_FOLDER


def default_judge_path(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / JUDGE_FOLDER


def shipped_created(root: Path | None = None) -> float | None:
    """When `make toy` wrote the shipped parts (seconds since the epoch), from the manifest;
    None when the package ships none."""
    manifest = (root or SHIPPED_ROOT) / MANIFEST_FILE
    if not manifest.is_file():
        return None
    return float(json.loads(manifest.read_text())["created"])


def newest(name: str, cache_dir: str | Path | None = None, shipped: Path | None = None) -> Path:
    """The cache's folder `name` if it is complete and newer than the shipped copy, else the
    shipped copy; one line saying how to make it when there is neither."""
    shipped = shipped or SHIPPED_ROOT
    marker = MARKERS[name]
    cached = cache_root(cache_dir) / name
    created = shipped_created(shipped)
    if (cached / marker).is_file() and (
        created is None or (cached / marker).stat().st_mtime > created
    ):
        return cached
    if created is not None and (shipped / name / marker).is_file():
        return shipped / name
    raise ModelUnavailableError(
        f"no toy {name.removeprefix('toy-')} at {cached} and none shipped with the package: "
        f"run `make toy` ({MAKE_TOY_TIME})"
    )


def toy_sd_path(cache_dir: str | Path | None = None) -> Path:
    """The pretrained toy model folder (`toy:sd`)."""
    return newest(MODEL_FOLDER, cache_dir)


def toy_classifier_path(cache_dir: str | Path | None = None) -> Path:
    """The reward's toy classifier folder (ToyAttributeReward's `classifier: null`)."""
    return newest(CLASSIFIER_FOLDER, cache_dir)


def toy_judge_path(cache_dir: str | Path | None = None) -> Path:
    """The toy judge folder (ToyJudgeReward's `judge: null`)."""
    return newest(JUDGE_FOLDER, cache_dir)
