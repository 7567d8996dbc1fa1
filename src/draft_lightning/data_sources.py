"""Prompt sources: what a ``train_prompts``/``val_prompts`` value names, and reading it again.

A source is resolved once (so a bad value fails at start-up with one line) and then read any
number of times: every training pass opens its files afresh and streams them record by record.
Kinds of source:

* a built-in set name (``simple_animals``, ``general``: package data) or an inline list;
* a local file or a glob over files: .txt, .jsonl, .json, .csv, .tsv, .parquet (pyarrow);
* ``hf:<dataset id>``: a Hugging Face dataset, streamed (needs the ``datasets`` package and a
  reachable hub).
"""

from __future__ import annotations

import glob
import importlib.util
import string
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from random import Random
from typing import Any

from draft_lightning.data_readers import (
    HAS_FIELDS,
    READERS,
    BadRecord,
    Fields,
    Record,
    read_json_rows,
)
from draft_lightning.errors import ConfigError

BUILTIN_SETS = ("simple_animals", "general")
HF_PREFIX = "hf:"
HEAD_RECORDS = 1000
"""Records checked at start-up when a source is not scanned in full."""

_GLOB_CHARS = set("*?[")
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


def _is_glob(text: str) -> bool:
    return any(char in _GLOB_CHARS for char in text)


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
        self.fields = Fields(prompt_field, tuple(metadata_fields))
        self.hf_split, self.hf_subset = hf_split, hf_subset
        self.items: list[str] | None = None
        self.paths: list[Path] = []
        self.hf_id: str | None = None
        if isinstance(spec, str):
            self._resolve_string(spec)
        elif isinstance(spec, Sequence):
            for i, item in enumerate(spec):
                if not isinstance(item, str):
                    raise ConfigError(f"{name}[{i}]={item!r} is not a string; prompts are strings")
            self.items = list(spec)
        else:
            raise ConfigError(
                f"{name}={spec!r} must be a built-in prompt set ({', '.join(BUILTIN_SETS)}), "
                "a file, a glob, hf:<dataset id>, or a list of prompts"
            )
        if self.fields.metadata and not self.has_fields:
            raise ConfigError(
                f"{name}={spec!r} has no named fields, so data.metadata_fields="
                f"{list(self.fields.metadata)} cannot be read from it (use .jsonl, .json, .csv, "
                ".tsv, .parquet or hf:)"
            )

    def _resolve_string(self, spec: str) -> None:
        name = self.name
        if spec in BUILTIN_SETS:
            text = (files("draft_lightning") / "prompts" / f"{spec}.txt").read_text("utf-8")
            self.items = text.splitlines()
            return
        if spec.startswith(HF_PREFIX):
            self.hf_id = spec[len(HF_PREFIX) :].strip()
            if self.hf_id.count("/") > 1 or not self.hf_id:
                raise ConfigError(f"{name}={spec!r} is not hf:<dataset id> (e.g. hf:owner/name)")
            if importlib.util.find_spec("datasets") is None:
                raise ConfigError(
                    f"{name}={spec!r} needs the Hugging Face datasets package: "
                    "pip install datasets (or export the prompts to a local file)"
                )
            return
        expanded = str(Path(spec).expanduser())
        if _is_glob(spec):
            matches = sorted(glob.glob(expanded, recursive=True))
            paths = [Path(match) for match in matches if Path(match).is_file()]
            if not paths:
                raise ConfigError(f"{name}={spec!r} is a glob that matches no files")
        else:
            path = Path(expanded)
            if path.is_dir():
                raise ConfigError(
                    f"{name}={spec!r} is a folder; name the files with a glob such as "
                    f"'{spec.rstrip('/')}/*.jsonl'"
                )
            if not path.is_file():
                raise ConfigError(
                    f"{name}={spec!r} is neither a built-in prompt set "
                    f"({', '.join(BUILTIN_SETS)}), an existing file, a glob, nor hf:<dataset id>"
                )
            paths = [path]
        for path in paths:
            suffix = path.suffix.lower()
            if suffix not in READERS:
                raise ConfigError(
                    f"{name}={spec!r}: {path} has an unsupported suffix {suffix or '(none)'!r} "
                    f"(supported: {', '.join(READERS)})"
                )
            if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
                raise ConfigError(
                    f"{name}={spec!r}: reading .parquet needs pyarrow: pip install pyarrow"
                )
        self.paths = paths

    @property
    def has_fields(self) -> bool:
        """Whether records have named fields (JSON, tables, datasets), i.e. can carry metadata."""
        if self.hf_id is not None:
            return True
        return bool(self.paths) and all(p.suffix.lower() in HAS_FIELDS for p in self.paths)

    @property
    def is_local(self) -> bool:
        """True unless the source streams from the network (a Hugging Face dataset)."""
        return self.hf_id is None

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
            if self.items is not None:
                for item in self.items:
                    if item.strip():
                        yield item.strip(), None
            elif self.hf_id is not None:
                yield from read_json_rows(self._hf_rows(), self.fields, f"hf:{self.hf_id}")
            else:
                paths = list(self.paths)
                if rng is not None:
                    for i in range(len(paths) - 1, 0, -1):  # Fisher-Yates, stable across Pythons
                        j = int(rng.random() * (i + 1))
                        paths[i], paths[j] = paths[j], paths[i]
                for path in paths:
                    yield from READERS[path.suffix.lower()](path, self.fields)
        except BadRecord as bad:
            raise ConfigError(self._bad_record_message(bad)) from None

    def _bad_record_message(self, bad: BadRecord) -> str:
        single = self.hf_id is not None or (len(self.paths) == 1 and str(self.paths[0]) == bad.path)
        place = [] if single else [bad.path]
        if bad.number is not None:
            place.append(f"{bad.unit} {bad.number}")
        where = f": {' '.join(place)} " if place else " "
        return f"{self.describe()}{where}{bad.problem}"

    def _hf_rows(self) -> Iterator[dict[str, Any]]:
        """Rows of the Hugging Face dataset, streamed; opening it is wrapped in a ConfigError."""
        import datasets  # optional dependency, checked when the source was resolved

        try:
            dataset = datasets.load_dataset(
                self.hf_id, name=self.hf_subset, split=self.hf_split, streaming=True
            )
            rows = iter(dataset)
            first = next(rows, None)
        except Exception as error:  # noqa: BLE001 - network, auth, missing dataset or split
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ConfigError(
                f"{self.describe()}: cannot stream the Hugging Face dataset "
                f"(split {self.hf_split!r}): {type(error).__name__}"
                f"{': ' + reason[:200] if reason else ''}; the hub may be unreachable: "
                "download the prompts where it is reachable and point to the local files"
            ) from None
        if first is not None:
            yield first
            yield from rows

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
            raise ConfigError(f"{self.describe()} {self._why_empty()}")
        return SourceCheck(count, count, too_long)

    def _why_empty(self) -> str:
        if self.items is not None:
            return "contains no prompts (only blank entries)"
        if self.hf_id is not None:
            return f"has no prompts in split {self.hf_split!r}"
        if len(self.paths) == 1 and self.paths[0].stat().st_size == 0:
            return "is an empty file"
        if len(self.paths) == 1:
            return "contains no prompts (only blank lines or blank prompt fields)"
        return f"matches {len(self.paths)} files but they contain no prompts"

    def head(self, count: int) -> list[Record]:
        """The first ``count`` records in source order (reads only as far as needed)."""
        out: list[Record] = []
        with closing(self.records()) as records:
            for record in records:
                out.append(record)
                if len(out) >= count:
                    break
        return out
