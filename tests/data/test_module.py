"""Fast tests for the training stream (order, sharding, position), the validation grid and the
DataModule's options. File formats: test_data_formats.py; resume through a real Trainer:
test_data_resume.py; bad input through the CLI: test_data_cli.py."""

from __future__ import annotations

import io
import itertools
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from torch.utils.data import DataLoader

import draft_lightning.data.readers as readers
from draft_lightning.data import (
    PromptDataModule,
    PromptSource,
    PromptStream,
    ValidationPrompts,
    builtin_prompt_sets,
    estimated_tokens,
    load_prompts,
)
from draft_lightning.errors import ConfigError


def take(iterable, n):
    return list(itertools.islice(iterable, n))


def flat(batches):
    return [p for batch in batches for p in batch["prompts"]]


def stream_prompts(stream: PromptStream, n: int, start: int = 0) -> list[str]:
    return [prompt for _, (prompt, _) in take(stream.global_stream(start), n)]


def write_lines(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


# --- sources ------------------------------------------------------------------------------------


def test_builtin_sets_load():
    assert builtin_prompt_sets() == ["simple_animals", "general"]
    animals = load_prompts("simple_animals")
    assert len(animals) == 45 == len(set(animals))
    assert {"cat", "dog", "kangaroo", "hedgehog"} <= set(animals)
    general = load_prompts("general")
    assert len(general) >= 20 and len(set(general)) == len(general)


def test_load_txt_file_skips_blank_lines(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes(b"\xef\xbb\xbfa red car\r\n\n   \n  a blue house  \nthe moon\n\n")
    assert load_prompts(str(path)) == ["a red car", "a blue house", "the moon"]


def test_inline_list():
    assert load_prompts(["a cat", " ", "a dog "]) == ["a cat", "a dog"]


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("foo", "'foo'"),
        ("missing/prompts.txt", "'missing/prompts.txt'"),
        ("nothing/*.jsonl", "matches no files"),
        ([], "train_prompts=[] contains no prompts"),
        (["", "  "], "['', '  '] contains no prompts (only blank entries)"),
        (["ok", 3], "3"),
        (5, "5"),
        ("hf:a/b/c", "hf:<dataset id>"),
    ],
)
def test_bad_sources_raise_one_line(source, shown):
    with pytest.raises(ConfigError) as err:
        load_prompts(source, name="train_prompts")
    message = str(err.value)
    assert "\n" not in message
    assert "train_prompts" in message and shown in message


def test_bad_files_raise_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n", encoding="utf-8")
    other = tmp_path / "prompts.xml"
    other.write_text("a cat\n", encoding="utf-8")
    cases = {empty: "is an empty file", blank: "only blank lines", other: "unsupported suffix"}
    cases[tmp_path] = "is a folder"
    for path, shown in cases.items():
        with pytest.raises(ConfigError) as err:
            PromptDataModule(train_prompts=str(path))
        message = str(err.value)
        assert "\n" not in message and repr(str(path)) in message and shown in message


def test_unknown_name_lists_builtin_sets():
    with pytest.raises(ConfigError, match=r"simple_animals, general"):
        load_prompts("animals")


def test_estimated_tokens_counts_words_digits_and_punctuation():
    assert estimated_tokens("a cat") == 2
    assert estimated_tokens("8k, highly detailed") == 5  # 8 | k | , | highly | detailed
    assert estimated_tokens("") == 0
    assert estimated_tokens("word " * 80) == 80


# --- the stream: order --------------------------------------------------------------------------

PROMPTS_50 = [f"p{i}" for i in range(50)]


def test_passes_are_permutations_with_a_new_order_each():
    items = stream_prompts(PromptStream(PROMPTS_50, seed=3), 150)
    passes = [items[:50], items[50:100], items[100:]]
    for one_pass in passes:
        assert sorted(one_pass) == sorted(PROMPTS_50)
    assert passes[0] != passes[1] != passes[2] != passes[0]
    assert passes[0] != PROMPTS_50  # shuffled, not file order


def test_same_seed_same_order_other_seed_differs():
    first = stream_prompts(PromptStream(PROMPTS_50, seed=7), 120)
    assert stream_prompts(PromptStream(PROMPTS_50, seed=7), 120) == first
    assert stream_prompts(PromptStream(PROMPTS_50, seed=8), 120) != first
    # every bit of the seed matters (torch's manual_seed would drop the high ones)
    assert stream_prompts(PromptStream(PROMPTS_50, seed=2**32), 120) != stream_prompts(
        PromptStream(PROMPTS_50, seed=0), 120
    )


def test_bounded_buffer_still_covers_each_pass_exactly_once():
    prompts = [f"p{i}" for i in range(1000)]
    items = stream_prompts(PromptStream(prompts, seed=0, shuffle_buffer=64), 2000)
    assert Counter(items[:1000]) == Counter(prompts) == Counter(items[1000:])
    assert items[:1000] != items[1000:] and items[:1000] != prompts
    ordered = stream_prompts(PromptStream(prompts, shuffle_buffer=1), 1000)
    assert ordered == prompts  # a buffer of 1 keeps file order


def test_files_of_a_glob_are_shuffled_per_pass(tmp_path):
    for f in range(4):
        write_lines(tmp_path / f"part{f}.txt", [f"f{f} p{i}" for i in range(5)])
    stream = PromptStream(PromptSource(str(tmp_path / "*.txt")), shuffle_buffer=1, seed=1)
    items = stream_prompts(stream, 80)
    file_orders = [tuple(items[20 * k + 5 * i][:2] for i in range(4)) for k in range(4)]
    assert all(sorted(order) == ["f0", "f1", "f2", "f3"] for order in file_orders)
    assert len(set(file_orders)) > 1  # a new file order in some pass
    assert all(Counter(items[20 * k : 20 * k + 20]) == Counter(items[:20]) for k in range(4))


# --- the stream: sharding ------------------------------------------------------------------------


def rank_batches(prompts, rank, world_size, num_workers, n_batches, batch_size, start=0):
    stream = PromptStream(prompts, batch_size=batch_size, seed=5, world_size=world_size, rank=rank)
    stream.start = start
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
    return take(iter(loader), n_batches)


def test_two_ranks_two_workers_cover_each_pass_exactly_once():
    prompts = [f"prompt {i}" for i in range(1000)]
    per_rank = [rank_batches(prompts, r, 2, 2, 200, 5) for r in range(2)]  # 2 passes
    for k in range(2):
        one_pass = [flat(batches[100 * k : 100 * (k + 1)]) for batches in per_rank]
        assert Counter(one_pass[0] + one_pass[1]) == Counter(prompts)
    # the ranks' batches interleave the single global stream: rank r's j-th batch is global
    # batch 2j + r, whatever the number of workers
    single = flat(rank_batches(prompts, 0, 1, 0, 400, 5))
    interleaved = [p for pair in zip(*per_rank, strict=True) for b in pair for p in b["prompts"]]
    assert interleaved == single


def test_uneven_sizes_still_partition_the_global_stream():
    # 10 prompts, 3 ranks, batches of 4: nothing dropped or repeated, pass boundaries inside
    # batches
    prompts = [f"p{i}" for i in range(10)]
    per_rank = [rank_batches(prompts, r, 3, 0, 5, 4) for r in range(3)]
    dealt = [p for j in range(5) for r in range(3) for p in per_rank[r][j]["prompts"]]
    assert dealt == stream_prompts(PromptStream(prompts, seed=5), 60)


def test_start_position_continues_the_stream():
    prompts = [f"p{i}" for i in range(30)]
    full = flat(rank_batches(prompts, 0, 1, 0, 21, 3))
    resumed = flat(rank_batches(prompts, 0, 1, 2, 10, 3, start=33))
    assert resumed == full[33:63]


def test_unknown_length_gives_the_same_stream_and_jumps_passes(tmp_path):
    path = write_lines(tmp_path / "p.txt", [f"p{i}" for i in range(40)])
    known = PromptStream(PromptSource(path), num_prompts=40, seed=2)
    unknown = PromptStream(PromptSource(path), num_prompts=None, seed=2)
    assert stream_prompts(unknown, 130) == stream_prompts(known, 130)
    assert stream_prompts(unknown, 30, start=95) == stream_prompts(known, 125)[95:]


def test_a_file_that_changes_during_training_stops_with_one_line(tmp_path):
    path = tmp_path / "p.txt"
    write_lines(path, ["a", "b", "c"])
    stream = PromptStream(PromptSource(str(path), name="train_prompts"), num_prompts=4)
    with pytest.raises(ConfigError, match=r"changed during training: 4 prompts at start-up, 3"):
        stream_prompts(stream, 10)


# --- streaming: the first batch comes before the file is read --------------------------------


class CountingRaw(io.RawIOBase):
    """A raw file that counts the bytes actually read from disk."""

    total = 0

    def __init__(self, path):
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self.file.readinto(buffer)
        CountingRaw.total += n
        return n

    def close(self):
        self.file.close()
        super().close()


def test_a_million_lines_start_yielding_at_once_without_reading_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    with path.open("w", encoding="utf-8") as out:
        for i in range(1_000_000):
            out.write(f"prompt number {i} of a large log\n")
    size = path.stat().st_size
    monkeypatch.setattr(
        readers, "open_binary", lambda p: io.BufferedReader(CountingRaw(p), 1 << 16)
    )
    begin = time.perf_counter()
    dm = PromptDataModule(train_prompts=str(path), batch_size=8, scan_files=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    elapsed = time.perf_counter() - begin
    assert len(batch["prompts"]) == 8
    assert elapsed < 1.0
    # the head check plus one shuffle buffer (10,000 lines) and a read-ahead chunk
    assert CountingRaw.total < size / 20, (CountingRaw.total, size)


# --- validation grid ----------------------------------------------------------------------------


def val_pairs(dm: PromptDataModule):
    pairs = []
    for batch in dm.val_dataloader():
        assert isinstance(batch["prompts"], list) and isinstance(batch["seeds"], list)
        pairs += list(zip(batch["prompts"], batch["seeds"], strict=True))
    return pairs


def test_validation_grid_is_fixed():
    dm = PromptDataModule(num_val_prompts=3, num_val_seeds=2, val_batch_size=4)
    dm.setup("fit")
    first = val_pairs(dm)
    animals = load_prompts("simple_animals")[:3]
    assert first == [(p, s) for p in animals for s in (0, 1)]
    assert val_pairs(dm) == first
    assert val_pairs(PromptDataModule(num_val_prompts=3, num_val_seeds=2, seed=9)) == first


def test_validation_items_are_dicts():
    ds = ValidationPrompts(["a", "b"], num_seeds=3, seed_offset=10)
    assert len(ds) == 6
    assert ds[0] == {"prompt": "a", "seed": 10} and ds[5] == {"prompt": "b", "seed": 12}


def test_explicit_val_prompts():
    dm = PromptDataModule(val_prompts=["x", "y"], num_val_prompts=1, num_val_seeds=1)
    assert val_pairs(dm) == [("x", 0), ("y", 0)]


# --- the DataModule -----------------------------------------------------------------------------


def test_train_batches_are_dicts_of_string_lists():
    dm = PromptDataModule(batch_size=3)
    dm.setup("fit")
    batches = take(iter(dm.train_dataloader()), 20)
    for batch in batches:
        assert set(batch) == {"prompts"}
        assert len(batch["prompts"]) == 3 and all(isinstance(p, str) for p in batch["prompts"])
    assert sorted(flat(batches[:15])) == sorted(load_prompts("simple_animals"))


def test_metadata_travels_with_prompts_in_train_and_val_batches(tmp_path):
    path = tmp_path / "hpd.csv"
    rows = [f"prompt {i},{['anime', 'photo'][i % 2]}" for i in range(12)]
    path.write_text("prompt,style\n" + "\n".join(rows) + "\n", encoding="utf-8")
    dm = PromptDataModule(str(path), batch_size=4, metadata_fields=["style"], num_val_seeds=1)
    dm.setup("fit")
    for batch in take(iter(dm.train_dataloader()), 6):
        assert set(batch) == {"prompts", "metadata"}
        for prompt, meta in zip(batch["prompts"], batch["metadata"], strict=True):
            assert meta == {"style": ["anime", "photo"][int(prompt.split()[1]) % 2]}
    val = next(iter(dm.val_dataloader()))
    assert val["metadata"] == [
        {"style": "anime"},
        {"style": "photo"},
        {"style": "anime"},
        {"style": "photo"},
    ]


def test_metadata_fields_need_a_source_with_fields():
    with pytest.raises(ConfigError, match=r"has no named fields.*metadata_fields"):
        PromptDataModule("simple_animals", metadata_fields=["style"])


def test_long_prompts_warn_once_with_the_count(tmp_path):
    path = write_lines(tmp_path / "p.txt", ["short one", "word " * 90, "x " * 76, "ok"])
    with pytest.warns(UserWarning, match=r"2 of 4 prompts look longer than 75 CLIP tokens"):
        dm = PromptDataModule(path)
    dm.setup("fit")
    assert "word " * 89 + "word" in flat(take(iter(dm.train_dataloader()), 1))  # not cut here


def test_setup_reads_trainer_rank():
    dm = PromptDataModule()
    dm.trainer = SimpleNamespace(world_size=4, global_rank=3)
    dm.setup("fit")
    assert (dm.train_set.world_size, dm.train_set.rank) == (4, 3)


def test_only_batches_received_in_training_advance_the_position():
    dm = PromptDataModule(batch_size=3)
    dm.trainer = SimpleNamespace(training=True, world_size=2)
    batch = {"prompts": ["a", "b", "c"]}
    assert dm.on_before_batch_transfer(batch, 0) is batch
    dm.trainer.training = False  # validation / sanity check
    dm.on_before_batch_transfer({"prompts": ["a"], "seeds": [0]}, 0)
    assert dm.position == 6 and dm.state_dict()["position"] == 6


def test_state_dict_round_trip_restarts_the_loader_at_the_position():
    dm = PromptDataModule(batch_size=3)
    first = flat(take(iter(dm.train_dataloader()), 10))
    restored = PromptDataModule(batch_size=3)
    restored.load_state_dict({**dm.state_dict(), "position": 12})
    assert flat(take(iter(restored.train_dataloader()), 6)) == first[12:30]
    with pytest.warns(UserWarning, match="differs from this run"):
        PromptDataModule(batch_size=3, seed=1).load_state_dict(dm.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"val_batch_size": -1}, "val_batch_size=-1"),
        ({"num_val_prompts": 0}, "num_val_prompts=0"),
        ({"num_val_seeds": 0}, "num_val_seeds=0"),
        ({"seed": -1}, "seed=-1"),
        ({"num_workers": -2}, "num_workers=-2"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"shuffle_buffer": 0}, "shuffle_buffer=0"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens=0"),
        ({"train_prompts": "nope"}, "train_prompts='nope'"),
        ({"val_prompts": "nope.txt"}, "val_prompts='nope.txt'"),
    ],
)
def test_datamodule_validates_eagerly(kwargs, shown):
    with pytest.raises(ConfigError) as err:
        PromptDataModule(**kwargs)
    assert "\n" not in str(err.value) and shown in str(err.value)


def test_all_prompts_lists_training_then_grid_prompts_once_each():
    data = PromptDataModule(
        train_prompts=["a cat", "a dog", "a cat"],
        val_prompts=["a dog", "a red cube"],
        eval_prompts=["a blue sphere"],
    )
    assert data.all_prompts() == ["a cat", "a dog", "a red cube", "a blue sphere"]
    data.train_source = SimpleNamespace(is_local=False, describe=lambda: "train_prompts='hf:a/b'")
    with pytest.raises(ConfigError, match="needs training prompts it can read in full"):
        data.all_prompts()
