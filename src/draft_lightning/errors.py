"""Errors that mean "the user asked for something we cannot do", shown as one line.

The CLI prints these without a traceback and exits non-zero; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad value in the configuration: the message names the value and what is allowed."""


class ModelUnavailableError(RuntimeError):
    """Weights that cannot be found locally or downloaded: the message says how to supply them."""


def missing_together(errors: Sequence[ModelUnavailableError]) -> ModelUnavailableError:
    """One error naming every missing download, so an offline user fetches them all before
    the next try rather than meeting them one rerun at a time."""
    parts = [part for e in errors for part in getattr(e, "parts", None) or [str(e)]]
    messages = list(dict.fromkeys(parts))  # unique, in order; combined errors flattened
    if len(messages) == 1:
        return errors[0]
    numbered = " ".join(f"({i}) {m}" for i, m in enumerate(messages, 1))
    combined = ModelUnavailableError(f"{len(messages)} downloads are missing: {numbered}")
    combined.parts = messages
    return combined


def load_each(loaders: Sequence[Callable[[], T]]) -> list[T]:
    """Every loader's result; when weights are missing, each loader is still tried and one
    error names all that are missing."""
    results, missing = [], []
    for load in loaders:
        try:
            results.append(load())
        except ModelUnavailableError as error:
            missing.append(error)
    if missing:
        raise missing_together(missing)
    return results
