"""A short refusal for a class path that names no class, listing the classes that slot
takes: jsonargparse's own message is 400-900 characters of union subtypes and nested
errors, and names none of the valid choices."""

from __future__ import annotations

import importlib
import re

# The project's plug-in slots and the base class each takes (others: read from the message).
SLOT_BASES = {
    "model": "draft_lightning.base_module.RewardFineTuningModule",
    "reward": "draft_lightning.rewards.base.Reward",
    "rewards": "draft_lightning.rewards.base.Reward",
    "estimator": "draft_lightning.estimators.base.Estimator",
}
NOT_A_PATH = re.compile(
    r"Parser key \"([^\"]+)\":\s*- Expected a path but (\S+) either not accessible"
)
SUBTYPE = re.compile(r"Subtypes: \[<class '([\w.]+)'>")


def unknown_class_message(message: str) -> str | None:
    """`<key>=<path>: no such class; known <slot> classes: ...` for jsonargparse's message
    about an unknown class path, or None when the message is about something else."""
    found = list(NOT_A_PATH.finditer(message))
    if not found:
        return None
    match = found[-1]  # the innermost slot
    slot, path = match.group(1), match.group(2)
    keys = [k for k in re.findall(r"Parser key \"([^\"]+)\"", message[: match.end()])]
    key = ".".join(dict.fromkeys(keys))  # e.g. model.reward
    base = SLOT_BASES.get(slot.rsplit(".", 1)[-1])
    subtype = SUBTYPE.search(message, match.end())
    if base is None and subtype is not None:
        base = subtype.group(1)
    known = known_classes(base) if base else []
    listed = f"; known {slot} classes: {', '.join(known)}" if known else ""
    return f"{key}={path}: no such class{listed}"


def known_classes(base_path: str) -> list[str]:
    """Public, concrete subclasses of the class at `base_path` imported so far, each by the
    shortest import path that reaches it (draft_lightning.rewards.Brightness)."""
    module, _, name = base_path.rpartition(".")
    if not module:  # a builtin such as float: not a slot for classes
        return []
    try:
        base = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    seen, stack = set(), list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.add(cls)
            stack.extend(cls.__subclasses__())
    names = {public_path(cls) for cls in seen if not cls.__name__.startswith("_")}
    return sorted(n for n in names if n.split(".")[0] not in ("tests", "plugins"))


def public_path(cls: type) -> str:
    """`package.Class` for the shortest package that exports the class, else its module's."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = ".".join(parts[:end])
        try:
            if getattr(importlib.import_module(module), cls.__name__, None) is cls:
                return f"{module}.{cls.__name__}"
        except ImportError:
            continue
    return f"{cls.__module__}.{cls.__qualname__}"
