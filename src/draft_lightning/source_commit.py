"""The git commit of the code that produced a result, marked `-dirty` when tracked files
differ from it: every shipped model, benchmark table and experiment run names one, so a
reader can check out the code that made it.

Commands that write into the checkout themselves (a report, a benchmark page) pass those
paths as `not_changes`, or every run after the first would be marked `-dirty` by its own
output.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def _git(folder: Path, *arguments: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *arguments], cwd=folder, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_commit(folder: Path, length: int = 7, not_changes: Sequence[str] = ()) -> str | None:
    """HEAD of the checkout holding `folder` (`length` hex digits), with `-dirty` when a
    tracked file anywhere in the checkout has uncommitted changes other than the paths in
    `not_changes` (relative to the checkout's root); None outside a git checkout."""
    head = _git(Path(folder), "rev-parse", f"--short={length}", "HEAD")
    if not head:
        return None
    pathspec = [":(top)"] + [f":(top,exclude){path}" for path in not_changes]
    changed = _git(Path(folder), "status", "--porcelain", "--untracked-files=no", "--", *pathspec)
    if changed is None:
        return None
    return head + ("-dirty" if changed else "")
