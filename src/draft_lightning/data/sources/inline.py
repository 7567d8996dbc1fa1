"""Prompts written in the config itself, as a list."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from random import Random

from draft_lightning.data.readers import Record
from draft_lightning.data.sources.base import SourceKind
from draft_lightning.errors import ConfigError


class InlineList(SourceKind):
    """A YAML list of prompt strings."""

    order = 20
    description = "a list of prompts"

    @classmethod
    def accepts(cls, spec: str | Sequence[str]) -> bool:
        return not isinstance(spec, str) and isinstance(spec, Sequence)

    def __init__(self, spec, name, fields, options) -> None:
        super().__init__(spec, name, fields, options)
        for i, item in enumerate(spec):
            if not isinstance(item, str):
                raise ConfigError(f"{name}[{i}]={item!r} is not a string; prompts are strings")

    def records(self, rng: Random | None) -> Iterator[Record]:
        for item in self.spec:
            if item.strip():
                yield item.strip(), None

    def why_empty(self) -> str:
        return "contains no prompts (only blank entries)"
