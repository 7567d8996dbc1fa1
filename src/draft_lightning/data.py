"""Prompt data for DRaFT: training streams prompts, validation uses fixed (prompt, seed) pairs.

DRaFT trains on prompts only (images come from the sampler), so the data side is small:

* :func:`load_prompts` turns a *source* (built-in set name, inline list, or ``.txt`` path) into a
  list of prompt strings. It is the one place that knows about source kinds; streaming files, globs
  and Hugging Face datasets will be added there later.
* :class:`PromptStream` is an infinite, seeded, rank- and worker-sharded training stream.
* :class:`ValidationPrompts` is the fixed grid ``prompts x seeds`` so that validation images are
  comparable across steps and runs.
* :class:`PromptDataModule` wires these into Lightning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

_BUILTIN_SETS = ("simple_animals", "general")


def builtin_prompt_sets() -> list[str]:
    """Names accepted by :func:`load_prompts` besides paths and inline lists."""
    return list(_BUILTIN_SETS)


def _clean(lines: Sequence[str]) -> list[str]:
    """Strip whitespace and drop blank entries, the same rule for every source."""
    return [line.strip() for line in lines if line.strip()]


def load_prompts(source: str | list[str], *, name: str = "source") -> list[str]:
    """Resolve a prompt source to a non-empty list of prompt strings.

    Args:
        source: A built-in set name (see :func:`builtin_prompt_sets`), a path to a local ``.txt``
            file with one prompt per line (blank lines skipped), or an inline list of prompts.
            A built-in name wins over a file of the same name in the working directory.
        name: What to call ``source`` in error messages (e.g. ``"train_prompts"``), so that a
            bad config value is reported under the option the user actually set.

    Raises:
        ValueError: One line naming the bad value and what is allowed.
    """
    allowed = ", ".join(_BUILTIN_SETS)
    if isinstance(source, str):
        if source in _BUILTIN_SETS:
            text = (files("draft_lightning") / "prompts" / f"{source}.txt").read_text("utf-8")
            prompts = _clean(text.splitlines())
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise ValueError(
                    f"{name}={source!r} is neither a built-in prompt set ({allowed}) "
                    "nor an existing .txt file"
                )
            if path.suffix.lower() != ".txt":
                raise ValueError(
                    f"{name}={source!r} is not a .txt file; only .txt files (one prompt per "
                    f"line) and built-in prompt sets ({allowed}) are supported"
                )
            prompts = _clean(path.read_text("utf-8").splitlines())
    elif isinstance(source, Sequence):
        for i, item in enumerate(source):
            if not isinstance(item, str):
                raise ValueError(f"{name}[{i}]={item!r} is not a string; prompts must be strings")
        prompts = _clean(source)
    else:
        raise ValueError(
            f"{name}={source!r} must be a built-in prompt set ({allowed}), "
            "a path to a .txt file, or a list of prompt strings"
        )
    if not prompts:
        raise ValueError(f"{name}={source!r} contains no prompts (only blank entries)")
    return prompts


def _pass_seed(seed: int, epoch: int, pass_index: int) -> int:
    """A 32-bit generator seed for one pass.

    torch's CPU generator only uses the low 32 bits of ``manual_seed``, so packing the tuple into
    one big integer would silently ignore parts of it; hashing mixes all of it into 32 bits.
    """
    digest = hashlib.blake2b(f"{seed}/{epoch}/{pass_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class PromptStream(IterableDataset):
    """Infinite stream of prompt strings, reshuffled every pass, sharded by rank and worker.

    The *global stream* is pass 0's permutation, then pass 1's, and so on; pass ``k`` is
    ``torch.randperm`` drawn from a generator seeded by ``(seed, epoch, k)``, so the order changes
    each pass (almost surely, for more than a handful of prompts) and is identical for the same
    seed. Global position ``p`` goes to shard ``p % (world_size * num_workers)``, where shard
    ``rank * num_workers + worker_id``. Hence:

    * If the number of prompts is divisible by ``world_size * num_workers``, every shard gets the
      same number of prompts per pass, and one pass over all shards covers each prompt exactly once.
    * Otherwise shards get ``floor`` or ``ceil`` of ``n / shards`` prompts of a pass, and shard
      boundaries drift across pass boundaries: nothing is dropped or repeated in the global
      stream, but a rank's slice of "its" pass may spill into the next pass.
    * DataLoader workers deliver whole batches in turn, so a pass is exactly covered once every
      worker has delivered its share; stopping mid-round leaves a few prompts for the next round.

    Iteration always starts at global position 0 of the current epoch. Resuming mid-stream will
    need only a start position (``p0``), which is why iteration is written in global positions.
    """

    def __init__(
        self, prompts: Sequence[str], seed: int = 0, world_size: int = 1, rank: int = 0
    ) -> None:
        if len(prompts) == 0:
            raise ValueError("prompts=[] is empty; PromptStream needs at least one prompt")
        self.prompts = list(prompts)
        self.seed = seed
        self.epoch = 0
        self.set_distributed(world_size, rank)

    def set_distributed(self, world_size: int, rank: int) -> None:
        """Set this process's rank; called by the DataModule once the trainer is known."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} world_size={world_size} needs 0 <= rank < world_size")
        self.world_size = world_size
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        """Give each new iteration (Lightning epoch) its own permutations instead of replaying."""
        self.epoch = epoch

    def permutation(self, pass_index: int, epoch: int | None = None) -> torch.Tensor:
        """Prompt indices in the order of pass ``pass_index`` (same on every rank and worker)."""
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(_pass_seed(self.seed, epoch, pass_index))
        return torch.randperm(len(self.prompts), generator=generator)

    def _shard(self) -> tuple[int, int]:
        """(this shard's index, number of shards) for the current rank and DataLoader worker."""
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.rank * num_workers + worker_id, self.world_size * num_workers

    def __iter__(self) -> Iterator[str]:
        shard, num_shards = self._shard()
        n, epoch = len(self.prompts), self.epoch
        pass_index, order = -1, torch.empty(0, dtype=torch.long)
        position = shard
        while True:
            if position // n != pass_index:
                pass_index = position // n
                order = self.permutation(pass_index, epoch)
            yield self.prompts[int(order[position % n])]
            position += num_shards


class ValidationPrompts(Dataset):
    """The fixed grid of ``{"prompt", "seed"}`` items, prompt-major, identical across runs.

    Seeds are ``range(seed_offset, seed_offset + num_seeds)`` for every prompt, so each validation
    image is reproducible and can be compared across steps and runs.
    """

    def __init__(self, prompts: Sequence[str], num_seeds: int = 2, seed_offset: int = 0) -> None:
        if len(prompts) == 0 or num_seeds < 1:
            raise ValueError(
                f"ValidationPrompts needs prompts and num_seeds >= 1, got {len(prompts)} prompts "
                f"and num_seeds={num_seeds}"
            )
        seeds = range(seed_offset, seed_offset + num_seeds)
        self.items = [(prompt, seed) for prompt in prompts for seed in seeds]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        prompt, seed = self.items[index]
        return {"prompt": prompt, "seed": seed}


def collate_train(batch: list[str]) -> dict[str, list[str]]:
    """Batch prompt strings as a list (the default collate would also work, but say it plainly)."""
    return {"prompts": list(batch)}


def collate_val(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Batch validation items as parallel lists (seeds stay Python ints for ``torch.Generator``)."""
    return {
        "prompts": [item["prompt"] for item in batch],
        "seeds": [item["seed"] for item in batch],
    }


class _StreamLoader(DataLoader):
    """DataLoader that moves its PromptStream to a fresh epoch on every ``iter()``.

    Lightning starts a new iteration of the train loader each epoch (e.g. with
    ``limit_train_batches``) and never calls ``set_epoch`` on an IterableDataset; without this the
    stream would replay the same prompt order every epoch. Workers must not be persistent, so that
    they receive the updated dataset copy on each ``iter()``.
    """

    _iterations = 0

    def __iter__(self) -> Any:
        self.dataset.set_epoch(self._iterations)
        self._iterations += 1
        return super().__iter__()


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


class PromptDataModule(L.LightningDataModule):
    """Prompts for DRaFT: an infinite shuffled training stream and a fixed validation grid."""

    def __init__(
        self,
        train_prompts: str | list[str] = "simple_animals",
        val_prompts: str | list[str] | None = None,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_val_prompts: int = 4,
        num_val_seeds: int = 2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        """Load and validate the prompt sources now, so config mistakes fail before training.

        Args:
            train_prompts: Training prompts: a built-in set (simple_animals, general), a path to a
                .txt file with one prompt per line, or an inline list of prompts.
            val_prompts: Validation prompts, same forms as train_prompts. None uses the first
                num_val_prompts training prompts.
            batch_size: Prompts per training batch on each device.
            val_batch_size: (prompt, seed) pairs per validation batch on each device. None uses
                batch_size.
            num_val_prompts: How many training prompts to validate on when val_prompts is None
                (all of them if there are fewer).
            num_val_seeds: Sampling seeds per validation prompt (seeds 0 .. num_val_seeds - 1),
                fixed so validation images are comparable across steps and runs.
            seed: Seed of the training prompt order; the same seed gives the same order.
            num_workers: DataLoader worker processes per device (0 loads in the main process).
        """
        super().__init__()
        _check_int("batch_size", batch_size, 1)
        if val_batch_size is not None:
            _check_int("val_batch_size", val_batch_size, 1)
        _check_int("num_val_prompts", num_val_prompts, 1)
        _check_int("num_val_seeds", num_val_seeds, 1)
        _check_int("seed", seed, 0)
        _check_int("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_batch_size = batch_size if val_batch_size is None else val_batch_size
        self.num_workers = num_workers

        train = load_prompts(train_prompts, name="train_prompts")
        if val_prompts is None:
            val = train[:num_val_prompts]
        else:
            val = load_prompts(val_prompts, name="val_prompts")
        self.train_set = PromptStream(train, seed=seed)
        self.val_set = ValidationPrompts(val, num_seeds=num_val_seeds)

    def setup(self, stage: str) -> None:
        """Shard the training stream by the trainer's rank (unsharded without a trainer)."""
        if self.trainer is not None:
            self.train_set.set_distributed(self.trainer.world_size, self.trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        # Lightning does not add a DistributedSampler to IterableDatasets: PromptStream shards
        # itself by rank and worker. persistent_workers stays False (see _StreamLoader).
        return _StreamLoader(
            self.train_set,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_train,
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        # Fixed order, no shuffling. Under DDP, Lightning wraps this map-style dataset in a
        # DistributedSampler(shuffle=False), which splits the grid across ranks; when the grid size
        # is not divisible by world_size it pads by repeating a few items, so those few (prompt,
        # seed) pairs are evaluated twice. We rely on that rather than sharding here.
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_val,
        )
