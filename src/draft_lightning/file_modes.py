"""Permissions for files written through a temporary: `tempfile` makes them 0600 (files)
and 0700 (folders) whatever the umask, so checkpoints and exported adapters renamed into
place from them would be unreadable to a colleague on shared storage. These give them the
mode a plain open() or mkdir() would: what the process's umask allows."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def as_if_created(path: str | Path) -> None:
    """chmod a temporary file or folder to the mode open()/mkdir() would have given it."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())
