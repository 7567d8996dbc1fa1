"""File formats and Hugging Face streaming: what each reads, and the one-line error naming the
bad line (or row) for what it cannot."""

from __future__ import annotations

import importlib.machinery
import itertools
import json
import sys
import types

import pytest

import draft_lightning.data.readers as readers
import draft_lightning.data.sources.base as sources
from draft_lightning.data import PromptDataModule, PromptSource, load_prompts
from draft_lightning.errors import ConfigError


def records(spec, **options):
    return list(PromptSource(spec, **options).records())


def one_line_error(spec, **options) -> str:
    with pytest.raises(ConfigError) as err:
        PromptDataModule(spec, **options)
    message = str(err.value)
    assert "\n" not in message
    return message


# --- JSON ---------------------------------------------------------------------------------------


def test_jsonl_field_metadata_blank_lines_and_bare_strings(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        {"caption": "a red fox", "style": "photo", "score": 0.5},
        {"caption": "  ", "style": "anime"},
        {"caption": "a castle", "style": "anime"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    got = records(str(path), prompt_field="caption", metadata_fields=["style"])
    assert got == [("a red fox", {"style": "photo"}), ("a castle", {"style": "anime"})]
    strings = tmp_path / "s.jsonl"
    strings.write_text('"a cat"\n"a dog"\n', encoding="utf-8")
    assert load_prompts(str(strings)) == ["a cat", "a dog"]


def test_json_array_streams_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "JSON_CHUNK", 7)  # every element crosses a chunk boundary
    items = [{"prompt": f"prompt number {i}", "n": 12345678 + i} for i in range(50)]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    got = records(str(path), metadata_fields=["n"])
    assert got == [(x["prompt"], {"n": x["n"]}) for x in items]
    (tmp_path / "e.json").write_text(" [ ] ", encoding="utf-8")
    assert records(str(tmp_path / "e.json")) == []


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "export.json"  # what Dataset.to_json writes
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n', encoding="utf-8")
    assert load_prompts(str(path)) == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "content", "shown"),
    [
        ("p.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', "line 2 has no field 'prompt'"),
        ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b",\n', "line 2 is not valid JSON"),
        ("p.jsonl", '{"prompt": "a"}\n\n{"prompt": 3}\n', "line 3 field 'prompt' is not a string"),
        ("p.jsonl", '{"prompt": "a"}\n[1, 2]\n', "line 2 is neither a JSON object nor a string"),
        ("p.json", '[\n {"prompt": "a"},\n {"text": "b"}\n]', "line 3 has no field 'prompt'"),
        ("p.json", '[\n {"prompt": "a"},\n {"prompt": "b" oops}\n]', "line 3 is not valid JSON"),
        ("p.json", '[\n {"prompt": "a"}\n {"prompt": "b"}]', "line 3 expected ',' or ']'"),
        ("p.json", '[{"prompt": "a"},', "ends inside the top-level JSON array"),
    ],
)
def test_json_errors_name_the_line(tmp_path, name, content, shown):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    message = one_line_error(str(path))
    assert message.startswith(f"train_prompts={str(path)!r}: ") and shown in message


def test_metadata_field_missing_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "style": "x"}\n{"prompt": "b"}\n', encoding="utf-8")
    assert "line 2 has no field 'style' (data.metadata_fields)" in one_line_error(
        str(path), metadata_fields=["style"]
    )


# --- text encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".json"])
def test_invalid_utf8_names_the_line(tmp_path, suffix):
    good = {
        ".txt": b"a cat\n",
        ".jsonl": b'{"prompt": "a cat"}\n',
        ".csv": b"prompt\na cat\n",
        ".json": b'[{"prompt": "a cat"},\n',
    }[suffix]
    path = tmp_path / f"p{suffix}"
    path.write_bytes(good + b"caf\xe9 au lait\n")
    line = good.count(b"\n") + 1
    assert f"line {line} is not valid UTF-8" in one_line_error(str(path))


# --- CSV / TSV ----------------------------------------------------------------------------------


def test_csv_quoted_fields_and_tsv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        'id,prompt,style\n1,"a cat, sitting",photo\n2,"two\nlines",anime\n\n3,,photo\n',
        encoding="utf-8",
    )
    got = records(str(path), metadata_fields=["style", "id"])
    assert got == [
        ("a cat, sitting", {"style": "photo", "id": "1"}),
        ("two\nlines", {"style": "anime", "id": "2"}),
    ]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("caption\tstyle\na, b\tx\n", encoding="utf-8")
    assert records(str(tsv), prompt_field="caption") == [("a, b", None)]


def test_csv_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text,style\na,b\n", encoding="utf-8")
    assert "line 1 has no column 'prompt' (data.prompt_field); columns: text, style" in (
        one_line_error(str(path))
    )
    path.write_text("style,prompt\nx,a\ny\n", encoding="utf-8")
    assert "line 3 has 1 of 2 columns" in one_line_error(str(path))


# --- globs --------------------------------------------------------------------------------------


def test_glob_mixes_formats_and_names_the_bad_file(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"prompt": "three"}\n', encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.csv").write_text("prompt\nfour\n", encoding="utf-8")
    assert load_prompts(str(tmp_path / "**" / "*.*")) == ["one", "two", "three", "four"]
    (tmp_path / "b.jsonl").write_text('{"prompt": "three"}\n{"x": 1}\n', encoding="utf-8")
    message = one_line_error(str(tmp_path / "*.*"))
    assert f"{tmp_path / 'b.jsonl'} line 2 has no field 'prompt'" in message


# --- scanning: everything at start-up, or the head and the rest when reached -------------------


def bad_at_line_1501(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"".join(b"prompt %d\n" % i for i in range(1500)) + b"\xff\xfe\n")
    return str(path)


def test_full_scan_finds_a_bad_line_at_the_end_before_training(tmp_path):
    assert "line 1501 is not valid UTF-8" in one_line_error(bad_at_line_1501(tmp_path))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_without_scan_a_late_bad_line_stops_iteration_with_one_line(tmp_path, num_workers):
    dm = PromptDataModule(bad_at_line_1501(tmp_path), scan_files=False, num_workers=num_workers)
    dm.setup("fit")
    with pytest.raises(ConfigError) as err:
        next(iter(dm.train_dataloader()))  # the shuffle buffer reads past line 1501
    assert str(err.value) == (
        f"train_prompts={dm.hparams.train_prompts!r}: line 1501 is not valid UTF-8 (byte 1)"
    )


# --- Parquet ------------------------------------------------------------------------------------


def test_parquet_column_and_metadata(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "prompt": [f"p{i}" for i in range(10_000)],
            "style": ["x", "y"] * 5_000,
            "n": range(10_000),
        }
    )
    path = tmp_path / "p.parquet"
    pq.write_table(table, path, row_group_size=3000)
    got = records(str(path), metadata_fields=["style"])
    assert len(got) == 10_000 and got[3] == ("p3", {"style": "y"})
    assert "has no column 'caption'" in one_line_error(str(path), prompt_field="caption")
    pq.write_table(pa.table({"prompt": ["a", None]}), path)
    assert "row 2 column 'prompt' is not a string" in one_line_error(str(path))
    path.write_bytes(b"not parquet at all")
    assert "is not a readable Parquet file" in one_line_error(str(path))


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util, "find_spec", lambda n: None if n == "pyarrow" else real(n)
    )
    assert "pip install pyarrow" in one_line_error(str(tmp_path / "p.parquet"))


# --- Hugging Face datasets (a stand-in module: no network, no package) -------------------------


@pytest.fixture
def fake_datasets(monkeypatch):
    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    module.calls = []
    rows = [{"prompt": f"hf {i}", "category": f"c{i % 3}"} for i in range(30)]

    def load_dataset(path, name=None, split=None, streaming=False):
        module.calls.append((path, name, split, streaming))
        if path == "offline/set":
            raise ConnectionError("Couldn't reach 'offline/set' on the Hub (LocalEntryNotFound)")
        if path == "broken/set":
            return iter(rows[:2] + [{"text": "no prompt"}])
        return iter(rows)

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return module


def test_hf_dataset_streams_with_metadata(fake_datasets):
    with pytest.warns(UserWarning, match="read in the main process"):
        dm = PromptDataModule(
            "hf:org/prompts",
            hf_split="test",
            metadata_fields=["category"],
            batch_size=5,
            num_workers=2,
        )
    assert fake_datasets.calls[0] == ("org/prompts", None, "test", True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 0  # datasets would give each worker only some shards
    batches = list(itertools.islice(iter(loader), 6))
    prompts = [p for b in batches for p in b["prompts"]]
    assert sorted(prompts) == sorted(f"hf {i}" for i in range(30))
    meta = [m for b in batches for m in b["metadata"]]
    assert all(
        m == {"category": f"c{int(p.split()[1]) % 3}"} for p, m in zip(prompts, meta, strict=True)
    )


def test_hf_errors_are_one_line(fake_datasets, monkeypatch):
    message = one_line_error("hf:offline/set")
    assert "cannot stream the Hugging Face dataset" in message
    assert "ConnectionError" in message and "local files" in message
    assert "row 3 has no field 'prompt'" in one_line_error("hf:broken/set")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    assert "pip install datasets" in one_line_error("hf:org/prompts")
