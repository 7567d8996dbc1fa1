"""Where the project keeps what it builds itself (tiny models, the toy model, tiny rewards),
and how a finished folder appears there atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from draft_lightning.file_modes import as_if_created


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $DRAFT_LIGHTNING_CACHE, else ~/.cache/draft_lightning."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DRAFT_LIGHTNING_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "draft_lightning"


def cached_build(
    name: str,
    build: Callable[[Path], object],
    cache_dir: str | Path | None = None,
    marker: str = "model_index.json",
) -> Path:
    """The cache folder `name`, built by `build(folder)` once if it lacks `marker`.

    Safe under concurrent callers (DDP ranks, pytest workers): each builds into its own
    temporary sibling folder and renames it into place, so the folder is only ever seen
    complete; if another process won the race, its folder is kept.
    """
    root = cache_root(cache_dir)
    target = root / name
    if (target / marker).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        as_if_created(tmp)  # not mkdtemp's 0700: readable as far as the umask allows
        build(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / marker).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
        as_if_created(tmp)  # not mkdtemp's 0700: readable as far as the umask allows
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
