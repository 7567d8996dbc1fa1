"""The sharded strategy: Lightning's ModelParallelStrategy (FSDP2) set up for reward
fine-tuning, chosen with `--trainer.strategy sharded` (or its class path in YAML).

What it adds to Lightning's strategy, and why:
- FSDP2 over every rank (`data_parallel_size` = world size) and no tensor parallelism:
  Lightning's "auto" would make tensor-parallel groups of each node's GPUs, which this
  project's models are not prepared for.
- Checkpoints hold only what trains. A distributed checkpoint is a folder in which every rank
  writes its shard of the LoRA weights and of the optimiser state
  (torch.distributed.checkpoint), plus `meta.pt` from rank 0 with the loop state, the data
  position and every rank's RNG states; the frozen weights reload from their source, as
  under DDP. Lightning's own load would ask the folder for every frozen weight too.
- The folder is written under a temporary name and renamed into place, so a job killed
  mid-save leaves the previous checkpoint whole (as AtomicCheckpointIO does for files).
- Resuming checks, before reading any tensor, that the folder holds every trained weight
  with this model's shape; it resumes on the same world size (each rank its own shard).
- bf16-true and 16-true precision are refused: they would cast the float32 LoRA weights.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_info

from draft_lightning.cache import atomic_folder
from draft_lightning.errors import ConfigError

META_FILE = "meta.pt"  # Lightning's name for the non-tensor part of a distributed checkpoint


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 data parallelism over every rank for models too large to replicate: the
    LightningModule shards itself in `configure_model` (RewardFineTuningModule does: the
    denoiser block by block, the VAE and reward as `model.sharding` says). See docs/sharding.md.

    Args:
        shard_size: how many ranks share one copy of the model. None (default): all of them
            (FSDP, ZeRO-3). The GPUs of one node (e.g. 8): each node holds a whole copy, sharded
            over its GPUs, and nodes replicate it (HSDP): weights are gathered over NVLink
            only, and just the LoRA gradients cross the network. Must divide the world size.
        process_group_backend: "nccl" or "gloo"; None chooses by accelerator.
    """

    def __init__(
        self, shard_size: int | None = None, process_group_backend: str | None = None
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=True,
            process_group_backend=process_group_backend,
        )
        if shard_size is not None and shard_size < 1:
            raise ConfigError(f"trainer.strategy.shard_size={shard_size} must be >= 1")
        self.shard_size = shard_size
        self._shard_mesh = None

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def setup(self, trainer) -> None:
        precision = getattr(self.precision_plugin, "precision", None)
        if precision in ("bf16-true", "16-true"):
            raise ConfigError(
                f"trainer.precision={precision} casts the LoRA weights to half precision; with "
                "the sharded strategy use bf16-mixed (and model.frozen_dtype: bfloat16)"
            )
        autocast = getattr(self.precision_plugin, "autocast_context_manager", None)
        if autocast is not None and autocast()._cache_enabled:
            # Lightning 2.6 turns the cache off; with it on, FSDP2 silently loses LoRA
            # gradients (models/sharding.py). Refuse rather than train on half the adapter.
            raise RuntimeError("the precision plugin's autocast caches weights: unsupported")
        super().setup(trainer)

    @property
    def data_parallel_mesh(self):
        """The mesh the module shards over: 1-D over every rank, or (replicas, shard_size)."""
        if self._shard_mesh is None:
            world = self.world_size
            size = self.shard_size or world
            if world % size:
                raise ConfigError(
                    f"trainer.strategy.shard_size={size} does not divide the {world} ranks"
                )
            if size == world:
                self._shard_mesh = self.device_mesh["data_parallel"]
                rank_zero_info(f"ShardedStrategy: the model sharded over all {world} ranks")
            else:
                from torch.distributed.device_mesh import init_device_mesh

                self._shard_mesh = init_device_mesh(
                    self.root_device.type,
                    (world // size, size),
                    mesh_dim_names=("replicate", "shard"),
                )
                rank_zero_info(
                    f"ShardedStrategy: {world // size} replicas of the model, each sharded "
                    f"over {size} rank(s) (HSDP)"
                )
        return self._shard_mesh

    # --- checkpoints: only what trains, one shard per rank, written atomically ------------

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The trainable (sharded) weights only: each rank saves its own shards."""
        return {
            name: parameter.detach()
            for name, parameter in self.lightning_module.named_parameters()
            if parameter.requires_grad
        }

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None
    ) -> None:
        from torch.distributed.checkpoint import save

        if storage_options is not None:
            raise TypeError("ShardedStrategy.save_checkpoint does not take storage_options")
        tensors = {"state_dict": checkpoint.pop("state_dict")}
        for index, state in enumerate(checkpoint.pop("optimizer_states", [])):
            tensors[f"optimizer_{index}"] = state
        rank_zero = self.global_rank == 0
        with ExitStack() as stack:
            # Rank 0 makes the temporary folder beside the target and renames it into place
            # once every rank has written its shard (save returns on rank 0 only then).
            tmp = stack.enter_context(atomic_folder(Path(filepath))) if rank_zero else None
            tmp = Path(self.broadcast(str(tmp)))
            save(tensors, checkpoint_id=tmp)  # fsyncs every file it writes
            if rank_zero:
                with open(tmp / META_FILE, "wb") as file:
                    torch.save(checkpoint, file)
                    file.flush()
                    os.fsync(file.fileno())
        self.barrier()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(str(checkpoint_path)))
        if not (path / META_FILE).is_file():
            raise ConfigError(
                f"ckpt_path={str(path)!r} is not a checkpoint of the sharded strategy (a folder "
                f"with {META_FILE}): resume it with the strategy it was written with"
            )
        module = self.lightning_module
        module.check_trained_weights(stored_shapes(path))  # one line if it does not fit
        weights = self.lightning_module_state_dict()
        load({"state_dict": weights}, checkpoint_id=path)  # into the shards, in place
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            state = {key: get_optimizer_state_dict(module, optimizer)}
            load(state, checkpoint_id=path)
            set_optimizer_state_dict(
                module, optimizer, state[key], options=StateDictOptions(cpu_offload=True)
            )
        checkpoint = torch.load(path / META_FILE, map_location="cpu", weights_only=True)
        checkpoint["state_dict"] = weights  # what on_load_checkpoint checks; already loaded
        return checkpoint


def stored_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight in a distributed checkpoint folder, from its metadata
    (no tensor is read)."""
    from torch.distributed.checkpoint import FileSystemReader

    stored = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    prefix = "state_dict."
    return {
        key[len(prefix) :]: tuple(value.size)
        for key, value in stored.items()
        if key.startswith(prefix)
    }


def data_parallel_mesh(trainer) -> Any | None:
    """The mesh to shard the model over, or None when the trainer's strategy does not shard.
    Strategies that shard some other way are refused in one line."""
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer.strategy if trainer is not None else None
    if isinstance(strategy, ShardedStrategy):
        return strategy.data_parallel_mesh
    if isinstance(strategy, FSDPStrategy | ModelParallelStrategy):
        name = type(strategy).__name__
        raise ConfigError(
            f"trainer.strategy={name} is not supported: use the sharded strategy "
            "(--trainer.strategy sharded), Lightning's ModelParallelStrategy with checkpoints "
            "that hold only the adapter"
        )
    return None


if "sharded" not in StrategyRegistry:
    StrategyRegistry.register(
        "sharded",
        ShardedStrategy,
        description="FSDP2 over every rank; checkpoints hold only the sharded adapter",
    )
