"""Batches of the toy world, rendered on the fly, for the three pretraining loops.

An endless stream needs no disk and never repeats a sample; a fixed seed and start make it
reproducible. Held-out data comes from a different world seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from draft_lightning.toy import world

HELD_OUT_SEED = 1_000_003  # training uses small seeds; this stream never overlaps them


def batch(seed: int, start: int, size: int) -> dict:
    """Samples start .. start + size - 1: images [B, 3, 32, 32] in [0, 1], labels [B, 5]
    (value index per attribute, in world.ATTRIBUTES order) and captions."""
    scenes = world.scenes(seed, range(start, start + size))
    return {
        "images": world.render(scenes),
        "labels": torch.tensor([s.labels() for s in scenes], dtype=torch.long),
        "captions": [s.caption for s in scenes],
    }


class WorldStream(IterableDataset):
    """Endless batches of consecutive samples from `start` on (single process)."""

    def __init__(self, seed: int, batch_size: int, start: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.batch_size = batch_size
        self.start = start

    def __iter__(self) -> Iterator[dict]:
        index = self.start
        while True:
            yield batch(self.seed, index, self.batch_size)
            index += self.batch_size


def loader(seed: int, batch_size: int) -> DataLoader:
    """A DataLoader over an endless WorldStream (batches are built by the stream)."""
    return DataLoader(WorldStream(seed, batch_size), batch_size=None, collate_fn=_identity)


def _identity(item: dict) -> dict:
    return item
