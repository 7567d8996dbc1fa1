"""The training stream: one seeded, endless order of prompts, dealt out in whole batches.

*Global stream.* Pass ``k`` reads the source once (the order of its files shuffled) through a
bounded shuffle buffer, both driven by a generator seeded with ``(seed, k)``; passes follow each
other forever. Position ``p`` counts prompts from 0, so pass ``k`` is positions
``[k N, (k + 1) N)`` for a source of ``N`` prompts: every prompt exactly once, in a new order.
The stream depends only on the source, the seed and the buffer size, never on ranks, workers or
batch size.

*Dealing.* Iteration begins at position ``start``. Global batch ``g`` is positions
``start + g B .. start + g B + B - 1``. Rank ``r`` of ``R`` receives the global batches
``g = j R + r`` (``j = 0, 1, ...``), and its DataLoader worker ``w`` of ``W`` produces those with
``j % W == w`` - the round-robin order in which a DataLoader hands out its workers' batches. So
when every rank has consumed ``n`` batches, the prompts consumed are exactly positions
``[start, start + n R B)``: a prefix of the stream. Resuming needs only that one number, and works
even with another number of ranks, workers or another batch size.

Every worker reads the whole source each pass and keeps its own batches; reading prompts is
cheap next to sampling images, and it is what makes the order independent of the topology.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from random import Random
from typing import Any, TypeVar

from torch.utils.data import IterableDataset, get_worker_info

from draft_lightning.data.readers import Record
from draft_lightning.data.sources import PromptSource
from draft_lightning.errors import ConfigError

T = TypeVar("T")


def pass_seed(seed: int, pass_index: int) -> int:
    """A 64-bit seed for one pass, mixing every bit of ``seed`` and the pass index."""
    digest = hashlib.blake2b(f"{seed}/{pass_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def shuffle_buffered(items: Iterable[T], rng: Random, capacity: int) -> Iterator[T]:
    """A permutation of ``items`` holding at most ``capacity`` of them at a time.

    Each item past the first ``capacity`` swaps with a random buffered one, which is emitted; the
    rest are emitted in random order at the end. With ``capacity >= len(items)`` this is a uniform
    shuffle; with ``capacity == 1`` it keeps the source order. Uses only ``rng.random()``, whose
    sequence Python keeps stable across versions.
    """
    buffer: list[T] = []
    for item in items:
        if len(buffer) < capacity:
            buffer.append(item)
            continue
        j = int(rng.random() * capacity)
        out, buffer[j] = buffer[j], item
        yield out
    for i in range(len(buffer) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        buffer[i], buffer[j] = buffer[j], buffer[i]
    yield from buffer


def collate_train(records: Sequence[Record]) -> dict[str, list[Any]]:
    """A training batch: ``prompts`` (list of str) and, when the source has metadata fields,
    ``metadata`` (one dict per prompt, in the same order)."""
    batch: dict[str, list[Any]] = {"prompts": [prompt for prompt, _ in records]}
    if records and records[0][1] is not None:
        batch["metadata"] = [metadata for _, metadata in records]
    return batch


class PromptStream(IterableDataset):
    """Endless training batches for one rank, sharded over its DataLoader workers.

    Args:
        source: A :class:`PromptSource`, or a list of prompts.
        batch_size: Prompts per batch.
        seed: Seed of the order; the same seed gives the same stream.
        shuffle_buffer: Prompts held for shuffling (bounded memory); 1 keeps the source order.
        num_prompts: The source's prompt count if known (a full start-up scan); otherwise it is
            learnt at the end of the first pass.
        world_size: Number of ranks sharing the stream.
        rank: This process's rank.
    """

    def __init__(
        self,
        source: PromptSource | Sequence[str],
        *,
        batch_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 10_000,
        num_prompts: int | None = None,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        if not isinstance(source, PromptSource):
            source = PromptSource(list(source), name="prompts")
            num_prompts = sum(1 for _ in source.records())
            if num_prompts == 0:
                raise ConfigError(f"{source.describe()} contains no prompts")
        if batch_size < 1 or shuffle_buffer < 1:
            raise ConfigError(
                f"batch_size={batch_size}, shuffle_buffer={shuffle_buffer}: both must be >= 1"
            )
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.num_prompts = num_prompts
        self.start = 0
        self.set_distributed(world_size, rank)

    def set_distributed(self, world_size: int, rank: int) -> None:
        """Set this process's rank; called by the DataModule once the trainer is known."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} world_size={world_size} needs 0 <= rank < world_size")
        self.world_size = world_size
        self.rank = rank

    def one_pass(self, pass_index: int) -> Iterator[Record]:
        """The records of pass ``pass_index`` in stream order."""
        rng = Random(pass_seed(self.seed, pass_index))
        return shuffle_buffered(self.source.records(rng), rng, self.shuffle_buffer)

    def global_stream(self, start: int = 0) -> Iterator[tuple[int, Record]]:
        """``(position, record)`` from ``start`` on, forever; the same in every process.

        With a known prompt count, iteration jumps straight to the pass holding ``start``; the
        records of that pass before ``start`` are still read, to put the shuffle buffer in the
        same state (cost: up to one pass of reading).
        """
        total = self.num_prompts
        pass_index = start // total if total else 0
        position = pass_index * total if total else 0
        while True:
            count = 0
            for record in self.one_pass(pass_index):
                if position >= start:
                    yield position, record
                position += 1
                count += 1
            if count == 0:
                raise ConfigError(f"{self.source.describe()} contains no prompts")
            if total is None:
                total = count
                if start >= position:
                    pass_index, position = start // total - 1, (start // total) * total
            elif count != total:
                raise ConfigError(
                    f"{self.source.describe()} changed during training: {total} prompts at "
                    f"start-up, {count} in pass {pass_index}"
                )
            pass_index += 1

    def __iter__(self) -> Iterator[dict[str, list[Any]]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        ranks, rank, size, start = self.world_size, self.rank, self.batch_size, self.start
        batch: list[Record] = []
        for position, record in self.global_stream(start):
            g = (position - start) // size
            if g % ranks != rank or (g // ranks) % workers != worker:
                continue
            batch.append(record)
            if len(batch) == size:
                yield collate_train(batch)
                batch = []
