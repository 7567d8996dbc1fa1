"""Facts about reaching the Hugging Face Hub, shared by every loader that falls back to it."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


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
