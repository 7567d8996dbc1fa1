"""The toy world's trained parts shipped inside the package (toy/pretrained/), so the demo
runs on a fresh install without `make toy`.

`python -m draft_lightning.toy.shipped` (`make toy-ship`) copies what `make toy` wrote to the
cache (toy-sd, toy-classifier, toy-judge) into the package: the model's weights as float16
safetensors (half the bytes; its images differ from the float32 model's by 0.0005 on
average, docs/toy.md), the classifier's and the judge's as saved (float32,
small), and a MANIFEST.json with every file's sha256, the commit whose `make toy` produced
them, and when, which decides whether a newer `make toy` output replaces them (paths.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from draft_lightning.errors import ConfigError
from draft_lightning.toy.paths import (
    CLASSIFIER_FOLDER,
    JUDGE_FOLDER,
    MANIFEST_FILE,
    MARKERS,
    MODEL_FOLDER,
    SHIPPED_ROOT,
    atomic_folder,
    cache_root,
)

# What a diffusers pipeline needs to load, of the model folder `make toy` writes (its
# samples.png stays in the cache).
MODEL_PARTS = ("model_index.json", "quality.json", "scheduler", "tokenizer", "text_encoder")
HALF_PRECISION_PARTS = ("unet", "vae", "text_encoder")
MAX_BYTES = 25 * 2**20


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` but the manifest, by relative POSIX path, sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    return {p.relative_to(root).as_posix(): sha256(p) for p in files}


def half_precision_copy(source: Path, target: Path) -> None:
    """`source` safetensors with floating-point tensors stored as float16."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(source))
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(half, str(target), metadata={"format": "pt"})


def copy_model(source: Path, target: Path) -> None:
    """The pipeline folder with float16 denoiser, VAE and text encoder weights."""
    target.mkdir(parents=True)
    for name in MODEL_PARTS:
        part = source / name
        if part.is_dir():
            shutil.copytree(part, target / name)
        else:
            shutil.copy2(part, target / name)
    for part in ("unet", "vae"):
        (target / part).mkdir(exist_ok=True)
        shutil.copy2(source / part / "config.json", target / part / "config.json")
    for part in HALF_PRECISION_PARTS:
        for weights in (source / part).glob("*.safetensors"):
            half_precision_copy(weights, target / part / weights.name)


def ship(
    cache_dir: str | Path | None = None, commit: str | None = None, target: Path = SHIPPED_ROOT
) -> dict:
    """Copy the cache's toy parts into `target` (replacing it atomically) with its manifest;
    return the manifest. `commit` defaults to the one `make toy` recorded in quality.json."""
    root = cache_root(cache_dir)
    for name, marker in MARKERS.items():
        if not (root / name / marker).is_file():
            raise ConfigError(f"no {name} in {root} (missing {marker}): run `make toy` first")
    quality = json.loads((root / MODEL_FOLDER / "quality.json").read_text())
    commit = commit or quality.get("commit")
    if not commit:
        raise ConfigError(
            "the commit that produced the toy model is unknown (quality.json has none): "
            "pass --commit"
        )
    with atomic_folder(target) as tmp:
        copy_model(root / MODEL_FOLDER, tmp / MODEL_FOLDER)
        for name in (CLASSIFIER_FOLDER, JUDGE_FOLDER):
            shutil.copytree(root / name, tmp / name)
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if size > MAX_BYTES:
            raise ConfigError(f"the toy parts take {size / 2**20:.1f} MiB, more than 25 MiB")
        manifest = {
            "commit": commit,
            # The cache folder's completion time: a later `make toy` output is newer.
            "created": (root / MODEL_FOLDER / MARKERS[MODEL_FOLDER]).stat().st_mtime,
            "source": "make toy (python -m draft_lightning.toy.pretrain)",
            "half_precision": [f"{MODEL_FOLDER}/{part}" for part in HALF_PRECISION_PARTS],
            "bytes": size,
            "files": file_hashes(tmp),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def mismatches(root: Path = SHIPPED_ROOT) -> list[str]:
    """Files whose sha256 differs from the manifest, or that are missing or not listed."""
    listed = json.loads((root / MANIFEST_FILE).read_text())["files"]
    found = file_hashes(root)
    return sorted(name for name in set(listed) | set(found) if listed.get(name) != found.get(name))


def main(cache_dir: str | None = None, commit: str | None = None) -> None:
    """Ship the toy parts `make toy` wrote into the package (src/draft_lightning/toy/pretrained).

    Args:
        cache_dir: where `make toy` wrote them (default $DRAFT_LIGHTNING_CACHE).
        commit: the commit whose `make toy` produced them (default: from quality.json).
    """
    manifest = ship(cache_dir, commit)
    print(
        f"shipped {len(manifest['files'])} files, {manifest['bytes'] / 2**20:.1f} MiB, "
        f"made at commit {manifest['commit']}, into {SHIPPED_ROOT}"
    )


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main, as_positional=False)
