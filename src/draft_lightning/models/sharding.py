"""Sharding the frozen model across data-parallel ranks with FSDP2 (`fully_shard`), for models
whose weights do not fit one accelerator next to a differentiable sampling step.

Each rank keeps 1/N of every sharded weight; a unit's weights are all-gathered just before it
runs and freed after it (again in the backward pass), and the LoRA gradients are
reduce-scattered so each rank updates only its shard of the adapter and its optimiser state.
On a 2-D mesh (replicas x shard) each replica group holds a whole copy, sharded over its own
ranks (HSDP), and the LoRA gradients are also all-reduced across the replicas.

The rule that makes it work: every module whose weights a step touches must be sharded or be
called through the forward of a sharded parent (FSDP2 gathers weights in forward hooks). A
sharded module used through another method (the VAE's `decode`, a reward's `score`) has that
method registered as a forward method; otherwise torch fails with "got mixed torch.Tensor and
DTensor". Modules left unsharded are plain replicas on every rank, which is equally valid.

Mixed precision: the frozen weights keep the storage dtype they were loaded in (bf16 for large
models) and the LoRA weights stay float32; FSDP2 casts nothing when gathering
(`param_dtype=None`) and reduces the LoRA gradients in float32. Compute precision comes from
the trainer's autocast (`precision: bf16-mixed`), exactly as without sharding. Autocast's
weight cache must be off (Lightning's is): with it on, torch 2.14 silently dropped the LoRA
gradients of every unit whose inputs require grad (seen on the tiny SDXL UNet).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from draft_lightning.errors import ConfigError

Placement = Literal["shard", "replicate"]


@dataclass(frozen=True)
class ShardingSettings:
    """Where the frozen parts live when the trainer's strategy shards (ShardedStrategy);
    ignored under DDP. The denoiser is always sharded, block by block.

    Args:
        vae: "shard" spreads the VAE over the ranks (gathered block by block for each decode);
            "replicate" keeps a full copy on every rank (no communication; about 160 MB in
            bf16 for SDXL's and FLUX's VAE, so replicating is the default).
        reward: the same choice for the reward model(s): "replicate" (default) suits rewards
            up to CLIP ViT-L (~0.9 GB in bf16); "shard" for larger ones.
        reshard_after_forward: free each gathered denoiser block right after its forward
            (ZeRO-3: least memory, one more all-gather per block in the backward pass); False
            keeps the gathered blocks of a differentiated call until its backward (ZeRO-2:
            the whole unsharded denoiser in memory, no second all-gather).
    """

    vae: Placement = "replicate"
    reward: Placement = "replicate"
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        for name in ("vae", "reward"):
            value = getattr(self, name)
            if value not in ("shard", "replicate"):
                raise ConfigError(f"sharding.{name}={value!r} must be 'shard' or 'replicate'")


def mixed_precision():
    """FSDP2's policy: gather every weight in its own dtype, reduce gradients in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)


def block_units(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The module's blocks: the children of its outermost `nn.ModuleList`s (a UNet's down and
    up blocks, a transformer's layers), each one FSDP unit. Lists inside a block stay in it."""
    taken: list[str] = []
    for name, child in module.named_modules():
        if not isinstance(child, nn.ModuleList):
            continue
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        taken.append(name)
        for index, block in enumerate(child):
            if any(True for _ in block.parameters()):
                yield f"{name}.{index}", block


def shard_module(
    module: nn.Module,
    mesh,
    forward_methods: Sequence[str] = (),
    reshard_after_forward: bool = True,
) -> list[str]:
    """`fully_shard` each block of `module`, then `module` itself (which keeps every weight
    outside the blocks), and register `forward_methods` so calling them gathers like forward.
    Returns the names of the block units."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    policy = mixed_precision()
    names = []
    for name, block in list(block_units(module)):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        names.append(name)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    for method in forward_methods:
        register_fsdp_forward_method(module, method)
    return names


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded (DTensor) weight, gathered from every rank: a collective,
    so every rank must call it; a plain tensor is returned as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def unsharded_parameters(module: nn.Module) -> list[str]:
    """Trainable parameters that are not sharded: under FSDP2 nothing would reduce their
    gradients across ranks, so sharding refuses to start while any exist."""
    from torch.distributed.tensor import DTensor

    return [
        name
        for name, parameter in module.named_parameters()
        if parameter.requires_grad and not isinstance(parameter, DTensor)
    ]
