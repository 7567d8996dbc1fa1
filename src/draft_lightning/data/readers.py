"""Readers for prompt files: one record at a time, so memory does not depend on file size.

Every reader takes a path and the :class:`Fields` to extract and yields ``(prompt, metadata)``
records, ``metadata`` being ``None`` unless metadata fields were asked for. Blank prompts are
dropped (the same rule for every format). A bad record raises :class:`BadRecord` naming its line
(or row); :mod:`draft_lightning.data_sources` turns that into a one-line ``ConfigError``.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

Record = tuple[str, dict[str, Any] | None]
"""A prompt and its metadata (``None`` when no metadata fields were requested)."""

READ_BUFFER = 1 << 16
JSON_CHUNK = 1 << 16
MAX_JSON_ELEMENT = 1 << 24  # characters; a longer array element is reported as invalid
_NON_SPACE = re.compile(r"\S")


class BadRecord(Exception):
    """A record that cannot become a prompt; ``unit``/``number`` say where (``line 12``)."""

    def __init__(self, path: Path | str, number: int | None, problem: str, unit: str = "line"):
        super().__init__(problem)
        self.path, self.number, self.problem, self.unit = str(path), number, problem, unit


@dataclass(frozen=True)
class Fields:
    """Which JSON field / table column holds the prompt, and which ones travel as metadata."""

    prompt: str = "prompt"
    metadata: tuple[str, ...] = ()


def open_binary(path: Path) -> BinaryIO:
    """Open a file for streaming reads (a seam: tests wrap it to count the bytes read)."""
    return open(path, "rb", buffering=READ_BUFFER)  # noqa: SIM115 - callers close it


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRecord(path, number, f"is not valid UTF-8 (byte {error.start + 1})") from None
    return text.removeprefix("\ufeff") if number == 1 else text


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) pairs, read lazily; invalid UTF-8 names its line."""
    with open_binary(path) as file:
        for number, raw in enumerate(file, 1):
            yield number, _decode(raw, path, number)


def read_txt(path: Path, fields: Fields) -> Iterator[Record]:
    """One prompt per line."""
    for _, line in _lines(path):
        prompt = line.strip()
        if prompt:
            yield prompt, None


def _from_json(
    value: Any, fields: Fields, path: Path | str, number: int, unit: str
) -> Record | None:
    """A record from one decoded JSON value: an object with the fields, or a bare string."""
    if isinstance(value, str):
        if fields.metadata:
            raise BadRecord(path, number, "is a bare string, so it has no metadata fields", unit)
        return (value.strip(), None) if value.strip() else None
    if not isinstance(value, dict):
        raise BadRecord(path, number, "is neither a JSON object nor a string", unit)
    if fields.prompt not in value:
        raise BadRecord(path, number, f"has no field {fields.prompt!r} (data.prompt_field)", unit)
    prompt = value[fields.prompt]
    if not isinstance(prompt, str):
        raise BadRecord(path, number, f"field {fields.prompt!r} is not a string", unit)
    metadata = None
    if fields.metadata:
        missing = [name for name in fields.metadata if name not in value]
        if missing:
            raise BadRecord(
                path, number, f"has no field {missing[0]!r} (data.metadata_fields)", unit
            )
        metadata = {name: value[name] for name in fields.metadata}
    return (prompt.strip(), metadata) if prompt.strip() else None


def read_jsonl(path: Path, fields: Fields) -> Iterator[Record]:
    """JSON Lines: one object (or string) per line; blank lines skipped."""
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadRecord(path, number, f"is not valid JSON ({error.msg})") from None
        record = _from_json(value, fields, path, number, "line")
        if record is not None:
            yield record


def read_json(path: Path, fields: Fields) -> Iterator[Record]:
    """A .json file: a top-level array streamed element by element, else JSON Lines.

    ``Dataset.to_json`` and many exporters write JSON Lines under a .json name, so both are
    accepted; the first non-blank character decides.
    """
    with open_binary(path) as file:
        head = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        yield from _json_array(path, fields)
    else:
        yield from read_jsonl(path, fields)


class _TextWindow:
    """A sliding window of decoded text over a binary file, tracking line numbers.

    Lets :func:`_json_array` parse one element at a time with ``raw_decode`` while keeping only
    the current element (plus one chunk) in memory.
    """

    def __init__(self, file: BinaryIO, path: Path) -> None:
        self.file, self.path = file, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text, self.pos, self.line, self.eof = "", 0, 1, False

    def more(self) -> bool:
        """Append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.file.read(JSON_CHUNK)
        self.eof = not chunk
        try:
            self.text += self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError as error:
            decoded = error.object[: error.start]  # may begin with bytes held from the last chunk
            bad_line = self.line + self.text.count("\n", self.pos) + decoded.count(b"\n")
            raise BadRecord(self.path, bad_line, "is not valid UTF-8") from None
        return True

    def advance(self, end: int) -> None:
        """Move past ``text[pos:end]``, counting its lines, and drop consumed text."""
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end
        if self.pos > JSON_CHUNK:
            self.text, self.pos = self.text[self.pos :], 0

    def next_char(self) -> str:
        """The next non-whitespace character ('' at the end), without consuming it."""
        while True:
            found = _NON_SPACE.search(self.text, self.pos)
            self.advance(found.start() if found else len(self.text))
            if found or not self.more():
                return self.text[self.pos : self.pos + 1]

    def value(self, decoder: json.JSONDecoder) -> Any:
        """Decode one JSON value at the cursor, reading more text until it is complete."""
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as error:
                if len(self.text) - self.pos < MAX_JSON_ELEMENT and self.more():
                    continue  # the element may go on in the next chunk
                line = self.line + self.text.count("\n", self.pos, error.pos)
                raise BadRecord(self.path, line, f"is not valid JSON ({error.msg})") from None
            if end == len(self.text) and self.more():
                continue  # a number may go on in the next chunk
            self.advance(end)
            return value


def _json_array(path: Path, fields: Fields) -> Iterator[Record]:
    decoder = json.JSONDecoder()
    with open_binary(path) as file:
        window = _TextWindow(file, path)
        window.next_char()
        window.advance(window.pos + 1)  # the "["
        index = 0
        while True:
            char = window.next_char()
            if char == "]" and index == 0:
                return
            if not char:
                raise BadRecord(path, window.line, "ends inside the top-level JSON array")
            line = window.line
            record = _from_json(window.value(decoder), fields, path, line, "line")
            index += 1
            if record is not None:
                yield record
            char = window.next_char()
            if char == "]":
                return
            if char != ",":
                raise BadRecord(path, window.line, "expected ',' or ']' after an array element")
            window.advance(window.pos + 1)


def read_delimited(path: Path, fields: Fields, delimiter: str) -> Iterator[Record]:
    """CSV/TSV with a header row naming the columns; quoted multi-line fields work."""
    numbered = _lines(path)
    reader = csv.reader((line for _, line in numbered), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [name.strip() for name in header]
        wanted = (fields.prompt, *fields.metadata)
        for name in wanted:
            if name not in columns:
                option = "data.prompt_field" if name == fields.prompt else "data.metadata_fields"
                raise BadRecord(
                    path, 1, f"has no column {name!r} ({option}); columns: {', '.join(columns)}"
                )
        indices = [columns.index(name) for name in wanted]
        last = max(indices)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= last:
                raise BadRecord(path, reader.line_num, f"has {len(row)} of {len(columns)} columns")
            prompt = row[indices[0]].strip()
            if prompt:
                metadata = {n: row[i] for n, i in zip(fields.metadata, indices[1:], strict=True)}
                yield prompt, (metadata if fields.metadata else None)
    except csv.Error as error:
        raise BadRecord(
            path, reader.line_num, f"is not valid {_kind(delimiter)} ({error})"
        ) from None


def _kind(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def read_csv(path: Path, fields: Fields) -> Iterator[Record]:
    """Comma-separated values with a header row."""
    return read_delimited(path, fields, ",")


def read_tsv(path: Path, fields: Fields) -> Iterator[Record]:
    """Tab-separated values with a header row."""
    return read_delimited(path, fields, "\t")


def read_parquet(path: Path, fields: Fields) -> Iterator[Record]:
    """Parquet, streamed in row batches of the needed columns only (needs pyarrow)."""
    import pyarrow.parquet as pq  # availability is checked when the source is resolved

    try:
        table = pq.ParquetFile(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise BadRecord(path, None, f"is not a readable Parquet file ({error})") from None
    columns = table.schema_arrow.names
    wanted = [fields.prompt, *fields.metadata]
    for name in wanted:
        if name not in columns:
            option = "data.prompt_field" if name == fields.prompt else "data.metadata_fields"
            raise BadRecord(path, None, f"has no column {name!r} ({option})")
    row = 0
    for batch in table.iter_batches(batch_size=4096, columns=wanted):
        values = [batch.column(i).to_pylist() for i in range(len(wanted))]
        for prompt, *extra in zip(*values, strict=True):
            row += 1
            if not isinstance(prompt, str):
                raise BadRecord(path, row, f"column {fields.prompt!r} is not a string", "row")
            if prompt.strip():
                metadata = dict(zip(fields.metadata, extra, strict=True))
                yield prompt.strip(), (metadata if fields.metadata else None)


READERS: dict[str, Callable[[Path, Fields], Iterator[Record]]] = {
    ".txt": read_txt,
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".tsv": read_tsv,
    ".parquet": read_parquet,
}
"""File suffix -> reader."""

HAS_FIELDS = {".jsonl", ".json", ".csv", ".tsv", ".parquet"}
"""Formats whose records have named fields (so metadata can travel with the prompt)."""


def read_json_rows(rows: Any, fields: Fields, where: str) -> Iterator[Record]:
    """Records from an iterable of dict rows (a Hugging Face dataset), numbered from 1."""
    for number, row in enumerate(rows, 1):
        record = _from_json(row, fields, where, number, "row")
        if record is not None:
            yield record
