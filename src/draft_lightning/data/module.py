"""Prompt data for DRaFT: training streams prompts, validation uses fixed (prompt, seed) pairs.

DRaFT trains on prompts only (images come from the sampler), so the data side is small but must
scale to large prompt logs:

* :class:`~draft_lightning.data_sources.PromptSource` resolves a ``train_prompts``/
  ``val_prompts`` value (built-in set, list, file, glob, ``hf:`` dataset) and reads it lazily;
  the file formats live in :mod:`draft_lightning.data_readers`.
* :class:`~draft_lightning.data_stream.PromptStream` is the endless, seeded, sharded training
  stream (see that module for why a resume needs only one number).
* :class:`ValidationPrompts` is the fixed grid ``prompts x seeds``, so that validation images are
  comparable across steps and runs.
* :class:`PromptDataModule` wires these into Lightning and saves the stream position in
  checkpoints. docs/data.md is the user-facing description.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from draft_lightning.data.readers import Record
from draft_lightning.data.sources import PromptSource, SourceCheck
from draft_lightning.data.sources.builtin import BUILTIN_SETS
from draft_lightning.data.stream import PromptStream
from draft_lightning.errors import ConfigError


def builtin_prompt_sets() -> list[str]:
    """Names accepted as a prompt source besides files, globs, hf: ids and inline lists."""
    return list(BUILTIN_SETS)


def load_prompts(source: str | list[str], *, name: str = "source", **options: Any) -> list[str]:
    """Read a (small) prompt source into a list of prompt strings.

    Args:
        source: Anything ``PromptDataModule`` accepts as ``train_prompts``.
        name: What to call ``source`` in error messages (e.g. ``"train_prompts"``).
        **options: ``prompt_field``, ``hf_split``, ... as for :class:`PromptSource`.

    Raises:
        ConfigError: One line naming the bad value, file line or record.
    """
    resolved = PromptSource(source, name=name, **options)
    prompts = [prompt for prompt, _ in resolved.records()]
    if not prompts:
        resolved.check(full=True, max_tokens=10**9)  # raises the specific "no prompts" error
    return prompts


class ValidationPrompts(Dataset):
    """The fixed grid of ``{"prompt", "seed"}`` items (plus ``"metadata"`` where the source has
    it), prompt-major, identical across runs.

    Seeds are ``range(seed_offset, seed_offset + num_seeds)`` for every prompt, so each validation
    image is reproducible and can be compared across steps and runs.
    """

    def __init__(
        self, prompts: Sequence[str | Record], num_seeds: int = 2, seed_offset: int = 0
    ) -> None:
        if len(prompts) == 0 or num_seeds < 1:
            raise ConfigError(
                f"ValidationPrompts needs prompts and num_seeds >= 1, got {len(prompts)} prompts "
                f"and num_seeds={num_seeds}"
            )
        records = [(p, None) if isinstance(p, str) else p for p in prompts]
        seeds = range(seed_offset, seed_offset + num_seeds)
        self.items = [(prompt, seed, meta) for prompt, meta in records for seed in seeds]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        prompt, seed, metadata = self.items[index]
        item: dict[str, Any] = {"prompt": prompt, "seed": seed}
        if metadata is not None:
            item["metadata"] = metadata
        return item


def collate_val(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Validation items as parallel lists (seeds stay Python ints for ``torch.Generator``)."""
    out: dict[str, list[Any]] = {
        "prompts": [item["prompt"] for item in batch],
        "seeds": [item["seed"] for item in batch],
    }
    if batch and "metadata" in batch[0]:
        out["metadata"] = [item["metadata"] for item in batch]
    return out


def _one_line(error: ConfigError) -> ConfigError:
    """A ConfigError re-raised from a DataLoader worker carries the worker's traceback in its
    message; keep only the original one-line message so the CLI can print it as such."""
    text = str(error).strip()
    if "\n" not in text:
        return error
    last = text.splitlines()[-1]
    marker = "ConfigError: "
    return ConfigError(last[last.index(marker) + len(marker) :] if marker in last else last)


class _OneLineErrors:
    """Iterator wrapper applying :func:`_one_line` to errors from the DataLoader's iterator."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.iterator = iterator

    def __iter__(self) -> _OneLineErrors:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.iterator)
        except ConfigError as error:
            # Stop the workers now: left to garbage collection through the traceback, the
            # shutdown would wait 5 s per worker (as Lightning does, use torch's own method).
            shutdown = getattr(self.iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            raise _one_line(error) from None

    def __getstate__(self) -> dict[str, Any]:
        return {"iterator": iter(())}  # a live DataLoader iterator cannot be pickled


class _StreamLoader(DataLoader):
    """DataLoader that starts its PromptStream at the consumed position on every ``iter()``.

    Lightning calls ``iter()`` at the start of fit (after restoring a checkpoint) and of each
    later epoch; the stream then continues exactly after the last batch the training loop
    received, whatever was prefetched and discarded. Workers are not persistent, so each
    ``iter()`` hands them the updated start.
    """

    def __init__(self, dataset: PromptStream, start: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kwargs)
        self.start = start

    def __iter__(self) -> Any:
        self.dataset.start = self.start()
        return _OneLineErrors(super().__iter__())

    # Declares the loader resumable, which it is through the DataModule's state; otherwise
    # Lightning warns on a mid-epoch resume when epochs are finite (limit_train_batches).
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")


class PromptDataModule(L.LightningDataModule):
    """Prompts: an endless, shuffled training stream and a fixed validation grid.

    The stream position is saved in checkpoints, so a resumed run sees the same prompts."""

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
        prompt_field: str = "prompt",
        metadata_fields: list[str] | None = None,
        shuffle_buffer: int = 10_000,
        scan_files: bool = True,
        max_prompt_tokens: int = 75,
        hf_split: str = "train",
        hf_subset: str | None = None,
        eval_prompts: str | list[str] | None = None,
        num_eval_seeds: int | None = None,
    ) -> None:
        """Resolve and check the prompt sources now, so mistakes fail before training starts.

        Args:
            train_prompts: Training prompts: a built-in set (simple_animals, general); a file or a
                glob over files (.txt one prompt per line; .jsonl/.json with prompt_field; .csv/
                .tsv with a header row and a prompt_field column; .parquet with pyarrow);
                hf:<dataset id> to stream a Hugging Face dataset (needs the datasets package);
                or an inline list of prompts. Files are streamed, never loaded whole.
            val_prompts: Validation prompts, same forms as train_prompts (read whole: keep it
                small). None uses the first num_val_prompts training prompts in source order.
            batch_size: Prompts per training batch on each device.
            val_batch_size: (prompt, seed) pairs per validation batch on each device. None uses
                batch_size.
            num_val_prompts: How many training prompts to validate on when val_prompts is None
                (all of them if there are fewer).
            num_val_seeds: Sampling seeds per validation prompt (seeds 0 .. num_val_seeds - 1),
                fixed so validation images are comparable across steps and runs.
            seed: Seed of the training prompt order; the same seed gives the same order.
            num_workers: DataLoader worker processes per device (0 loads in the main process).
            prompt_field: JSON field or table column holding the prompt (.jsonl, .json, .csv,
                .tsv, .parquet, hf:).
            metadata_fields: Fields/columns carried with each prompt (e.g. [style] for HPDv2);
                batches then have a "metadata" list of dicts beside "prompts".
            shuffle_buffer: Prompts held in memory for shuffling; each pass is a new seeded
                order. A source no larger than this is shuffled uniformly; 1 keeps file order.
            scan_files: Read local files once at start-up (constant memory; about 1 s per
                million .txt lines, 2-5 s for .jsonl) to count prompts and check every line.
                False checks only the first 1000 prompts, and a bad line further on stops
                training when reached. hf: sources are never scanned in full.
            max_prompt_tokens: Estimated CLIP tokens above which a prompt counts as too long for
                the one start-up warning; the text encoder truncates such prompts at its
                77-token limit (75 + start and end tokens).
            hf_split: Split of an hf: dataset.
            hf_subset: Configuration (subset) of an hf: dataset, if it has several.
            eval_prompts: Prompts for `lightning test` and `lightning predict`, same forms as
                val_prompts (read whole). None uses the validation prompts.
            num_eval_seeds: Seeds per prompt for test and predict (seeds 0 .. n - 1). None uses
                num_val_seeds.
        """
        super().__init__()
        _check_int("batch_size", batch_size, 1)
        if val_batch_size is not None:
            _check_int("val_batch_size", val_batch_size, 1)
        _check_int("num_val_prompts", num_val_prompts, 1)
        _check_int("num_val_seeds", num_val_seeds, 1)
        _check_int("seed", seed, 0)
        _check_int("num_workers", num_workers, 0)
        _check_int("shuffle_buffer", shuffle_buffer, 1)
        _check_int("max_prompt_tokens", max_prompt_tokens, 1)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_batch_size = batch_size if val_batch_size is None else val_batch_size
        self.num_workers = num_workers
        self.max_prompt_tokens = max_prompt_tokens
        options = dict(
            prompt_field=prompt_field,
            metadata_fields=metadata_fields or (),
            hf_split=hf_split,
            hf_subset=hf_subset,
        )

        train = PromptSource(train_prompts, name="train_prompts", **options)
        self.train_source = train
        found = train.check(full=scan_files, max_tokens=max_prompt_tokens)
        self._warn_long(train, found)
        # datasets' streaming gives each DataLoader worker only some of its shards, but every
        # worker must read the whole stream (see data_stream), so hf: is read in the main process.
        self.train_workers = num_workers if train.is_local else 0
        if num_workers and not train.is_local:
            rank_zero_warn(
                f"{train.describe()} is read in the main process (num_workers={num_workers} "
                "applies to validation only): Hugging Face streaming splits its shards among "
                "DataLoader workers"
            )
        self.train_set = PromptStream(
            train,
            batch_size=batch_size,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            num_prompts=found.num_prompts,
        )
        if val_prompts is None:
            val_records = train.head(num_val_prompts)
        else:
            val = PromptSource(val_prompts, name="val_prompts", **options)
            self._warn_long(val, val.check(full=True, max_tokens=max_prompt_tokens))
            val_records = list(val.records())
        self.val_set = ValidationPrompts(val_records, num_seeds=num_val_seeds)
        if num_eval_seeds is not None:
            _check_int("num_eval_seeds", num_eval_seeds, 1)
        if eval_prompts is None:
            eval_records = val_records
        else:
            evaluation = PromptSource(eval_prompts, name="eval_prompts", **options)
            self._warn_long(evaluation, evaluation.check(full=True, max_tokens=max_prompt_tokens))
            eval_records = list(evaluation.records())
        self.eval_set = ValidationPrompts(eval_records, num_seeds=num_eval_seeds or num_val_seeds)
        # Global prompt position of the next training batch (all ranks together); advanced as
        # the training loop receives batches, saved in and restored from checkpoints.
        self.position = 0
        self._stream_id = (
            f"{train.describe()} seed={seed} shuffle_buffer={shuffle_buffer} "
            f"prompts={found.num_prompts}"
        )

    def _warn_long(self, source: PromptSource, found: SourceCheck) -> None:
        if found.too_long:
            scope = "" if found.num_prompts is not None else f"the first {found.checked} "
            rank_zero_warn(
                f"{source.describe()}: {found.too_long} of {scope}{found.checked} prompts look "
                f"longer than {self.max_prompt_tokens} CLIP tokens (estimated); the text encoder "
                "truncates them to its 77-token limit"
            )

    def all_prompts(self) -> list[str]:
        """Every prompt this module can hand out, once each: the training source's (one pass
        in source order), then the validation and evaluation grids'. For precomputing their
        text embeddings (model.prompt_embedding_cache); an hf: training source, streamed and
        possibly unbounded, is refused."""
        if not self.train_source.is_local:
            raise ConfigError(
                f"model.prompt_embedding_cache needs training prompts it can read in full; "
                f"{self.train_source.describe()} is streamed from the Hub"
            )
        prompts = [prompt for prompt, _ in self.train_source.records()]
        for grid in (self.val_set, self.eval_set):
            prompts.extend(prompt for prompt, _, _ in grid.items)
        return list(dict.fromkeys(prompts))

    def setup(self, stage: str) -> None:
        """Shard the training stream by the trainer's rank (unsharded without a trainer)."""
        if self.trainer is not None:
            self.train_set.set_distributed(self.trainer.world_size, self.trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        # Lightning adds no DistributedSampler to an IterableDataset: PromptStream deals batches
        # to ranks and workers itself, in the order the DataLoader collects them.
        return _StreamLoader(
            self.train_set, start=lambda: self.position, num_workers=self.train_workers
        )

    def val_dataloader(self) -> DataLoader:
        # Fixed order, no shuffling. Under DDP, Lightning wraps this map-style dataset in a
        # DistributedSampler(shuffle=False), which splits the grid across ranks; when the grid size
        # is not divisible by world_size it pads by repeating a few items, so those few (prompt,
        # seed) pairs are evaluated twice. We rely on that rather than sharding here.
        return self._grid_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._grid_loader(self.eval_set)

    def predict_dataloader(self) -> DataLoader:
        return self._grid_loader(self.eval_set)

    def _grid_loader(self, grid: ValidationPrompts) -> DataLoader:
        return DataLoader(
            grid,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_val,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Advance the position by each training batch the loop actually receives.

        Lightning's fetcher and the DataLoader's workers read batches ahead; those are not
        counted, so a checkpoint holds the position after the last batch trained on.
        """
        trainer = self.trainer
        if trainer is not None and trainer.training and isinstance(batch, dict):
            self.position += len(batch["prompts"]) * trainer.world_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning in every checkpoint (under this class's name)."""
        return {"position": self.position, "stream": self._stream_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored by Lightning before the training loader is iterated."""
        self.position = int(state_dict["position"])
        if state_dict.get("stream") != self._stream_id:
            rank_zero_warn(
                f"the checkpoint's prompt stream ({state_dict.get('stream')}) differs from this "
                f"run's ({self._stream_id}); continuing at position {self.position} of the new one"
            )
