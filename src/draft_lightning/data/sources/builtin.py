"""Prompt sets shipped with the package (`simple_animals`, `general`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib.resources import files
from random import Random

from draft_lightning.data.readers import Record
from draft_lightning.data.sources.base import SourceKind

BUILTIN_SETS = ("simple_animals", "general")


class BuiltinSet(SourceKind):
    """A prompt set in src/draft_lightning/prompts/<name>.txt, one prompt per line."""

    order = 10
    description = f"a built-in prompt set ({', '.join(BUILTIN_SETS)})"

    @classmethod
    def accepts(cls, spec: str | Sequence[str]) -> bool:
        return isinstance(spec, str) and spec in BUILTIN_SETS

    def records(self, rng: Random | None) -> Iterator[Record]:
        text = (files("draft_lightning") / "prompts" / f"{self.spec}.txt").read_text("utf-8")
        for line in text.splitlines():
            if line.strip():
                yield line.strip(), None
