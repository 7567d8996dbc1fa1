"""Local prompt files and globs over them (.txt, .jsonl, .json, .csv, .tsv, .parquet),
streamed record by record in constant memory."""

from __future__ import annotations

import glob
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from random import Random

from draft_lightning.data.readers import HAS_FIELDS, READERS, BadRecord, Record
from draft_lightning.data.sources.base import SourceKind
from draft_lightning.errors import ConfigError

_GLOB_CHARS = set("*?[")


class PromptFiles(SourceKind):
    """One file or a glob; every other string value ends here (last in order)."""

    order = 90
    description = "an existing file, a glob"

    @classmethod
    def accepts(cls, spec: str | Sequence[str]) -> bool:
        return isinstance(spec, str)

    def __init__(self, spec, name, fields, options) -> None:
        super().__init__(spec, name, fields, options)
        self.paths = self._resolve(spec, name)

    @staticmethod
    def _resolve(spec: str, name: str) -> list[Path]:
        expanded = str(Path(spec).expanduser())
        if any(char in _GLOB_CHARS for char in spec):
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
                from draft_lightning.data.sources.builtin import BUILTIN_SETS

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
        return paths

    @property
    def has_fields(self) -> bool:
        return all(p.suffix.lower() in HAS_FIELDS for p in self.paths)

    def records(self, rng: Random | None) -> Iterator[Record]:
        paths = list(self.paths)
        if rng is not None:
            for i in range(len(paths) - 1, 0, -1):  # Fisher-Yates, stable across Pythons
                j = int(rng.random() * (i + 1))
                paths[i], paths[j] = paths[j], paths[i]
        for path in paths:
            yield from READERS[path.suffix.lower()](path, self.fields)

    def located(self, bad: BadRecord) -> list[str]:
        single = len(self.paths) == 1 and str(self.paths[0]) == bad.path
        return ([] if single else [bad.path]) + super().located(bad)

    def why_empty(self) -> str:
        if len(self.paths) == 1 and self.paths[0].stat().st_size == 0:
            return "is an empty file"
        if len(self.paths) == 1:
            return "contains no prompts (only blank lines or blank prompt fields)"
        return f"matches {len(self.paths)} files but they contain no prompts"
