"""Named models and weights (`tiny:sd`, `toy:sd`, `tiny:hpsv2`, ...) resolved to local paths.

Loading code asks this registry for a name and never imports what provides it, so the
package's lower layers know no test model or toy world. Providers register through Python
entry points (pyproject.toml, groups `draft_lightning.<kind>`), which lets another package add
its own names without touching this one, or at run time with `register`.

Kinds: "models" (a diffusers pipeline folder), "weights" (a reward's weight file or folder),
"open_clip" (an OpenCLIP model config JSON, registered with open_clip under its file stem).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from draft_lightning.errors import ConfigError

KINDS = ("models", "weights", "open_clip")
_registered: dict[str, dict[str, Callable[[], Path]]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, resolver: Callable[[], Path]) -> None:
    """Make `name` resolve through `resolver()` (e.g. a folder you build in a test)."""
    _check_kind(kind)
    _registered[kind][name] = resolver


def names(kind: str) -> list[str]:
    """Every name of this kind, sorted."""
    _check_kind(kind)
    return sorted({*_entry_points(kind), *_registered[kind]})


def is_named(kind: str, name: str) -> bool:
    return name in _registered[kind] or name in _entry_points(kind)


def resolve(kind: str, name: str, what: str) -> Path:
    """The local path `name` stands for (built on first use where its provider builds).

    Args:
        kind: one of KINDS.
        name: the registered name, e.g. "tiny:sd".
        what: the setting being resolved, for the message when the name is unknown.
    """
    _check_kind(kind)
    resolver = _registered[kind].get(name)
    if resolver is None:
        point = _entry_points(kind).get(name)
        if point is None:
            raise ConfigError(
                f"{what}={name!r} is not a known name (known: {', '.join(names(kind))})"
            )
        resolver = point.load()
    return Path(resolver())


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"registry kind {kind!r} is not one of {KINDS}")


@cache
def _entry_points(kind: str) -> dict:
    return {point.name: point for point in entry_points(group=f"draft_lightning.{kind}")}
