"""Fast tests for prompt loading, the sharded training stream and the fixed validation grid."""

from __future__ import annotations

import itertools
from collections import Counter
from types import SimpleNamespace

import pytest
from torch.utils.data import DataLoader

import draft_lightning.data as data
from draft_lightning.data import (
    PromptDataModule,
    PromptStream,
    ValidationPrompts,
    builtin_prompt_sets,
    load_prompts,
)


def take(iterable, n):
    return list(itertools.islice(iterable, n))


def one_pass_per_shard(stream: PromptStream, world_size: int, num_workers: int, monkeypatch):
    """One pass's items per (rank, worker) shard; workers simulated via get_worker_info."""
    per_shard = len(stream.prompts) // (world_size * num_workers)
    shards = {}
    for rank in range(world_size):
        stream.set_distributed(world_size, rank)
        for worker in range(num_workers):
            info = SimpleNamespace(id=worker, num_workers=num_workers)
            monkeypatch.setattr(data, "get_worker_info", lambda info=info: info)
            shards[rank, worker] = take(iter(stream), per_shard)
    return shards


# --- load_prompts -------------------------------------------------------------------------------


def test_builtin_sets_load():
    assert builtin_prompt_sets() == ["simple_animals", "general"]
    animals = load_prompts("simple_animals")
    assert len(animals) == 45 == len(set(animals))
    assert {"cat", "dog", "kangaroo", "hedgehog"} <= set(animals)
    general = load_prompts("general")
    assert len(general) >= 20 and len(set(general)) == len(general)


def test_load_txt_file_skips_blank_lines(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("a red car\n\n   \n  a blue house  \nthe moon\n\n", encoding="utf-8")
    assert load_prompts(str(path)) == ["a red car", "a blue house", "the moon"]


def test_inline_list():
    assert load_prompts(["a cat", " ", "a dog "]) == ["a cat", "a dog"]


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("foo", "'foo'"),
        ("missing/prompts.txt", "'missing/prompts.txt'"),
        ([], "[]"),
        (["", "  "], "['', '  ']"),
        (["ok", 3], "3"),
        (5, "5"),
    ],
)
def test_bad_sources_raise_one_line(source, shown):
    with pytest.raises(ValueError) as err:
        load_prompts(source, name="train_prompts")
    message = str(err.value)
    assert "\n" not in message
    assert "train_prompts" in message and shown in message


def test_bad_files_raise_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    other = tmp_path / "prompts.csv"
    other.write_text("a cat\n", encoding="utf-8")
    for path in (empty, other, tmp_path):
        with pytest.raises(ValueError) as err:
            load_prompts(str(path), name="val_prompts")
        assert "\n" not in str(err.value) and repr(str(path)) in str(err.value)


def test_unknown_name_lists_builtin_sets():
    with pytest.raises(ValueError, match=r"simple_animals, general"):
        load_prompts("animals")


# --- PromptStream -------------------------------------------------------------------------------


def test_stream_passes_are_permutations_with_new_order():
    prompts = [f"p{i}" for i in range(50)]
    items = take(iter(PromptStream(prompts, seed=3)), 150)
    passes = [items[:50], items[50:100], items[100:]]
    for one_pass in passes:
        assert sorted(one_pass) == sorted(prompts)
    assert passes[0] != passes[1] != passes[2] != passes[0]
    assert passes[0] != prompts  # shuffled, not file order


def test_stream_same_seed_same_order_and_other_seed_differs():
    prompts = [f"p{i}" for i in range(50)]
    first = take(iter(PromptStream(prompts, seed=7)), 120)
    assert take(iter(PromptStream(prompts, seed=7)), 120) == first
    assert take(iter(PromptStream(prompts, seed=8)), 120) != first


def test_seeds_differing_by_2_pow_32_differ():
    # torch's generator ignores the high bits of manual_seed; the pass seed must not.
    prompts = [f"p{i}" for i in range(50)]
    assert take(iter(PromptStream(prompts, seed=0)), 50) != take(
        iter(PromptStream(prompts, seed=2**32)), 50
    )


def test_new_epoch_gives_new_order():
    prompts = [f"p{i}" for i in range(50)]
    stream = PromptStream(prompts, seed=0)
    epoch0 = take(iter(stream), 50)
    stream.set_epoch(1)
    epoch1 = take(iter(stream), 50)
    assert sorted(epoch1) == sorted(prompts) and epoch1 != epoch0


def test_two_ranks_two_workers_cover_one_pass_exactly_once(monkeypatch):
    prompts = [f"prompt {i}" for i in range(1000)]
    stream = PromptStream(prompts, seed=0)
    shards = one_pass_per_shard(stream, world_size=2, num_workers=2, monkeypatch=monkeypatch)
    assert all(len(items) == 250 for items in shards.values())
    union = [p for items in shards.values() for p in items]
    assert Counter(union) == Counter(prompts)
    # the shards interleave the unsharded stream's first pass
    monkeypatch.setattr(data, "get_worker_info", lambda: None)
    stream.set_distributed(1, 0)
    full = take(iter(stream), 1000)
    assert shards[1, 0] == full[2::4]


def test_stream_through_real_dataloader_workers():
    prompts = [f"prompt {i}" for i in range(40)]
    seen = []
    for rank in range(2):
        stream = PromptStream(prompts, seed=1, world_size=2, rank=rank)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        seen += take(iter(loader), 20)  # workers alternate: 10 items from each
    assert Counter(seen) == Counter(prompts)


def test_indivisible_count_still_partitions_global_stream():
    # 10 prompts over 3 shards: per-shard counts differ, but nothing is dropped or repeated.
    prompts = [f"p{i}" for i in range(10)]
    full = take(iter(PromptStream(prompts, seed=2)), 30)
    sharded = [
        take(iter(PromptStream(prompts, seed=2, world_size=3, rank=r)), 10) for r in range(3)
    ]
    assert [sharded[p % 3][p // 3] for p in range(30)] == full


def test_bad_rank_raises():
    with pytest.raises(ValueError, match="rank=2"):
        PromptStream(["a"], world_size=2, rank=2)


# --- ValidationPrompts and the DataModule -------------------------------------------------------


def val_pairs(dm: PromptDataModule):
    loader = dm.val_dataloader()
    pairs = []
    for batch in loader:
        assert set(batch) == {"prompts", "seeds"}
        assert isinstance(batch["prompts"], list) and isinstance(batch["seeds"], list)
        pairs += list(zip(batch["prompts"], batch["seeds"], strict=True))
    return pairs


def test_validation_grid_is_fixed():
    dm = PromptDataModule(num_val_prompts=3, num_val_seeds=2, val_batch_size=4)
    dm.setup("fit")
    first = val_pairs(dm)
    assert len(first) == 3 * 2 == len(dm.val_set)
    animals = load_prompts("simple_animals")[:3]
    assert first == [(p, s) for p in animals for s in (0, 1)]
    assert val_pairs(dm) == first
    assert val_pairs(PromptDataModule(num_val_prompts=3, num_val_seeds=2, seed=9)) == first


def test_validation_items_are_dicts():
    ds = ValidationPrompts(["a", "b"], num_seeds=3, seed_offset=10)
    assert len(ds) == 6
    assert ds[0] == {"prompt": "a", "seed": 10} and ds[5] == {"prompt": "b", "seed": 12}


def test_explicit_val_prompts(tmp_path):
    dm = PromptDataModule(val_prompts=["x", "y"], num_val_prompts=1, num_val_seeds=1)
    assert val_pairs(dm) == [("x", 0), ("y", 0)]


def test_train_batches_are_dicts_of_string_lists():
    dm = PromptDataModule(batch_size=3)
    dm.setup("fit")
    batches = take(iter(dm.train_dataloader()), 20)
    for batch in batches:
        assert set(batch) == {"prompts"}
        assert isinstance(batch["prompts"], list) and len(batch["prompts"]) == 3
        assert all(isinstance(p, str) for p in batch["prompts"])
    first_pass = [p for batch in batches[:15] for p in batch["prompts"]]
    assert sorted(first_pass) == sorted(load_prompts("simple_animals"))


def test_train_loader_new_iteration_is_new_epoch():
    dm = PromptDataModule(batch_size=5)
    dm.setup("fit")
    loader = dm.train_dataloader()
    first = take(iter(loader), 9)
    second = take(iter(loader), 9)
    assert first != second
    again = PromptDataModule(batch_size=5).train_dataloader()
    assert take(iter(again), 9) == first


def test_setup_reads_trainer_rank():
    dm = PromptDataModule()
    dm.trainer = SimpleNamespace(world_size=4, global_rank=3)
    dm.setup("fit")
    assert (dm.train_set.world_size, dm.train_set.rank) == (4, 3)


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
        ({"train_prompts": "nope"}, "train_prompts='nope'"),
        ({"val_prompts": "nope.txt"}, "val_prompts='nope.txt'"),
    ],
)
def test_datamodule_validates_eagerly(kwargs, shown):
    with pytest.raises(ValueError) as err:
        PromptDataModule(**kwargs)
    assert "\n" not in str(err.value) and shown in str(err.value)
