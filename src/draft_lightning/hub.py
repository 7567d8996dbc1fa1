"""The Hugging Face Hub: reachability, the cache location, and the one downloader every loader
uses (the local cache first, then the network; one line saying what to fetch when neither
works)."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from draft_lightning.errors import ModelUnavailableError


def offline_reason() -> str | None:
    """Why a download cannot work, if that is known without trying: huggingface_hub retries
    an unreachable host for ~20 s, so an unresolvable name is reported at once."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"{host} cannot be resolved"
    return None


def hf_cache_dir() -> str:
    """Where huggingface_hub looks for cached repos (what to copy onto an offline machine)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def snapshot(
    repo_id: str,
    what: str,
    patterns: Sequence[str],
    required: Sequence[str] = (),
    alternatives: Sequence[str] = (),
    instead: str = "a local folder",
    note: str = "",
) -> Path:
    """The files of a Hub repo matching `patterns`: cached, else downloaded.

    Args:
        repo_id: "org/name".
        what: the setting being resolved (e.g. "model.pretrained_model"), named in messages.
        patterns: allow-patterns always fetched (configs, tokenizers, weights).
        required: file names the folder must hold; "a|b" means either.
        alternatives: weight-file patterns in order of preference: only the first one the
            repo has is fetched (e.g. safetensors before .bin duplicates).
        instead: what else `what` may be set to, for the message.
        note: an extra hint for the message (e.g. a licence to accept first).
    """
    from huggingface_hub import snapshot_download

    reason = "not found"
    for local_only in (True, False):
        if not local_only and (offline := offline_reason()) is not None:
            reason = offline
            break
        for weight in alternatives or [None]:
            allow = [*patterns, *([weight] if weight else [])]
            try:
                folder = Path(
                    snapshot_download(repo_id, allow_patterns=allow, local_files_only=local_only)
                )
            except Exception as error:  # noqa: BLE001 - any cache miss, network or auth failure
                reason = type(error).__name__
                continue
            if all(_has(folder, name) for name in required) and (
                weight is None or any(folder.glob(weight))
            ):
                return folder
            wanted = ", ".join([*required, *([weight] if weight else [])]).replace("|", " or ")
            reason = f"the repo lacks {wanted}"
    raise ModelUnavailableError(
        f"{what}: Hugging Face repo {repo_id!r} is not in the local cache and could not be "
        f"downloaded ({reason}): {note}run `hf download {repo_id}` on a machine with access "
        f"and copy the cache to {hf_cache_dir()}, or set {what} to {instead}"
    )


def hub_file(repo_id: str, filenames: str | Sequence[str], what: str) -> Path:
    """One file of a Hub repo (the first of `filenames` found): cached, else downloaded."""
    from huggingface_hub import hf_hub_download

    names = [filenames] if isinstance(filenames, str) else list(filenames)
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached: try the next name, then downloads
            pass
    reason = offline_reason()
    if reason is None:
        for name in names:
            try:
                return Path(hf_hub_download(repo_id, name))
            except Exception as error:  # noqa: BLE001 - network, auth or missing file
                reason = type(error).__name__
    shown = " or ".join(repr(name) for name in names)
    raise ModelUnavailableError(
        f"{what}: file {shown} of Hugging Face repo {repo_id!r} is not in the local cache "
        f"and could not be downloaded ({reason}): run `hf download {repo_id} "
        f"{names[0]}` on a machine with access and copy the cache to {hf_cache_dir()}, or set "
        f"{what} to a local copy of the file"
    )


def _has(folder: Path, name: str) -> bool:
    return any((folder / option).is_file() for option in name.split("|"))
