"""Prompt sources: what a ``train_prompts``/``val_prompts`` value names, and reading it again.

A source is resolved once (so a bad value fails at start-up with one line) and then read any
number of times: every training pass opens its files afresh and streams them record by record.
Each kind of source is one file in this folder, registered by the prefix of the values it
reads (``hf:``) or, without a prefix, by whether it accepts a value; adding a kind is adding a
file that defines a `SourceKind` subclass:

* builtin.py: a built-in set name (``simple_animals``, ``general``: package data);
* inline.py: a list of prompts written in the config;
* files.py: a local file or a glob over files: .txt, .jsonl, .json, .csv, .tsv, .parquet;
* huggingface.py: ``hf:<dataset id>``, a Hugging Face dataset, streamed.
"""

from __future__ import annotations

import importlib
import pkgutil
import string
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from random import Random
from typing import Any, ClassVar

from draft_lightning.data.readers import BadRecord, Fields, Record
from draft_lightning.errors import ConfigError

HEAD_RECORDS = 1000
"""Records checked at start-up when a source is not scanned in full."""

_SPLIT_OFF = (string.punctuation + string.digits).encode()
_TO_SPACE = bytes.maketrans(_SPLIT_OFF, b" " * len(_SPLIT_OFF))


def estimated_tokens(prompt: str) -> int:
    """CLIP tokens a prompt needs, estimated cheaply (about 1 us) for scanning big files.

    CLIP's tokenizer splits text into letter runs, single digits and punctuation before BPE; this
    counts letter runs plus every ASCII digit and punctuation mark. Common words are one token,
    rare words several, so real counts can be somewhat higher.
    """
    raw = prompt.encode()
    marks = len(raw) - len(raw.translate(None, _SPLIT_OFF))
    return len(raw.translate(_TO_SPACE).split()) + marks


@dataclass(frozen=True)
class SourceCheck:
    """What a start-up check found: the prompt count (None when not read to the end) and how
    many of the prompts read look longer than the token limit."""

    num_prompts: int | None
    checked: int
    too_long: int


class SourceKind(ABC):
    """One kind of prompt source, resolved from the user's value.

    `prefix` claims every string value that starts with it; kinds without a prefix are asked
    in `order` whether they `accept` a value (the files kind, last, accepts everything else).
    """

    prefix: ClassVar[str | None] = None
    order: ClassVar[int] = 50
    description: ClassVar[str]  # for messages listing what a value may be

    @classmethod
    def accepts(cls, spec: str | Sequence[str]) -> bool:
        return isinstance(spec, str) and cls.prefix is not None and spec.startswith(cls.prefix)

    def __init__(self, spec: Any, name: str, fields: Fields, options: dict[str, Any]) -> None:
        self.spec, self.name, self.fields, self.options = spec, name, fields, options

    @abstractmethod
    def records(self, rng: Random | None) -> Iterator[Record]:
        """One pass over every record, in source order (`rng` may shuffle the files)."""

    has_fields = False  # whether records have named fields (can carry metadata)
    is_local = True  # False when the source streams from the network

    def why_empty(self) -> str:
        return "contains no prompts"

    def located(self, bad: BadRecord) -> list[str]:
        """Where a bad record is, beyond the source's own name (e.g. which of several files)."""
        return [] if bad.number is None else [f"{bad.unit} {bad.number}"]


@cache
def source_kinds() -> list[type[SourceKind]]:
    """Every kind defined in this package: prefixed kinds first, then by `order`."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"draft_lightning.data.sources.{module.name}")
    kinds = list(_subclasses(SourceKind))
    return sorted(kinds, key=lambda kind: (kind.prefix is None, kind.order, kind.__name__))


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


class PromptSource:
    """A resolved prompt source that can be read in full, any number of times.

    Args:
        spec: A built-in set name, a file path, a glob, ``hf:<dataset id>``, or a list of prompts.
        name: The option being resolved (``train_prompts``), for error messages.
        prompt_field: JSON field / table column holding the prompt (not used for .txt).
        metadata_fields: Fields/columns carried with each prompt as a metadata dict.
        hf_split: Split of a Hugging Face dataset.
        hf_subset: Configuration ("subset") of a Hugging Face dataset, if it has several.
    """

    def __init__(
        self,
        spec: str | Sequence[str],
        *,
        name: str = "source",
        prompt_field: str = "prompt",
        metadata_fields: Sequence[str] = (),
        hf_split: str = "train",
        hf_subset: str | None = None,
    ) -> None:
        self.spec, self.name = spec, name
        fields = Fields(prompt_field, tuple(metadata_fields))
        options = {"hf_split": hf_split, "hf_subset": hf_subset}
        kind = next((k for k in source_kinds() if k.accepts(spec)), None)
        if kind is None:
            allowed = ", ".join(k.description for k in source_kinds())
            raise ConfigError(f"{name}={spec!r} must be {allowed}")
        self.kind = kind(spec, name, fields, options)
        if fields.metadata and not self.has_fields:
            raise ConfigError(
                f"{name}={spec!r} has no named fields, so data.metadata_fields="
                f"{list(fields.metadata)} cannot be read from it (use .jsonl, .json, .csv, "
                ".tsv, .parquet or hf:)"
            )

    @property
    def has_fields(self) -> bool:
        """Whether records have named fields (JSON, tables, datasets), i.e. can carry metadata."""
        return self.kind.has_fields

    @property
    def is_local(self) -> bool:
        """True unless the source streams from the network (a Hugging Face dataset)."""
        return self.kind.is_local

    def describe(self) -> str:
        """The value as the user wrote it, for messages and checkpoint fingerprints."""
        if isinstance(self.spec, str):
            return f"{self.name}={self.spec!r}"
        if len(self.spec) <= 5:
            return f"{self.name}={list(self.spec)!r}"
        return f"{self.name}=<list of {len(self.spec)} prompts>"

    def records(self, rng: Random | None = None) -> Iterator[Record]:
        """One pass over every record, in source order; ``rng`` shuffles the order of files.

        Raises:
            ConfigError: One line naming the bad record's file and line (or row).
        """
        try:
            yield from self.kind.records(rng)
        except BadRecord as bad:
            place = self.kind.located(bad)
            where = f": {' '.join(place)} " if place else " "
            raise ConfigError(f"{self.describe()}{where}{bad.problem}") from None

    def check(self, full: bool, max_tokens: int) -> SourceCheck:
        """Read the source (all of it, or its first :data:`HEAD_RECORDS` prompts) at start-up.

        Memory stays constant either way; a full check of local files gives the exact prompt
        count and proves every record readable before training starts.

        Raises:
            ConfigError: A bad record, or no prompts at all.
        """
        read_all = full and self.is_local
        count = too_long = 0
        with closing(self.records()) as records:
            for prompt, _ in records:
                count += 1
                if len(prompt) > max_tokens and estimated_tokens(prompt) > max_tokens:
                    too_long += 1
                if not read_all and count >= HEAD_RECORDS:
                    return SourceCheck(None, count, too_long)
        if count == 0:
            raise ConfigError(f"{self.describe()} {self.kind.why_empty()}")
        return SourceCheck(count, count, too_long)

    def head(self, count: int) -> list[Record]:
        """The first ``count`` records in source order (reads only as far as needed)."""
        out: list[Record] = []
        with closing(self.records()) as records:
            for record in records:
                out.append(record)
                if len(out) >= count:
                    break
        return out
