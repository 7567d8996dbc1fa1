"""One training step's LoRA gradients, sharded over the ranks of a torchrun launch, or in one
process for the reference. Imported by test_sharding.py (the reference and the cases) and run
by it under `python -m torch.distributed.run --nproc_per_node 2 sharded_step.py OUT`: rank 0
writes each case's gathered gradients to OUT/<case>.pt."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch

PROMPTS = ["a red cube", "a cat", "a blue sphere on grass", "an astronaut riding a horse"]
# (case, model, estimator, frozen dtype, mesh) on the tiny FLUX.1-dev: DRaFT-K with two
# differentiated steps and DRaFT-LV in float32, sharded over both ranks; DRaFT-LV on a bfloat16
# base under autocast with float32 LoRA weights; DRaFT-LV on a (2 replicas x 1) mesh, HSDP's
# replication path. And DRaFT-LV on the tiny SDXL, whose UNet blocks are sharded differently.
CASES = [
    ("flux_draft_k", "tiny:flux", "DraftK", "float32", "shard"),
    ("flux_draft_lv", "tiny:flux", "DraftLV", "float32", "shard"),
    ("flux_draft_lv_bf16", "tiny:flux", "DraftLV", "bfloat16", "shard"),
    ("flux_draft_lv_hybrid", "tiny:flux", "DraftLV", "float32", "hybrid"),
    ("sdxl_draft_lv", "tiny:sdxl", "DraftLV", "float32", "shard"),
]


def build(model: str, estimator: str, frozen_dtype: str):
    """A tiny model with a reward that has weights (a tiny CLIP aesthetic predictor), LoRA B
    made non-zero so every LoRA weight has a non-trivial gradient; identical in every process."""
    from draft_lightning import estimators
    from draft_lightning.models.sharding import ShardingSettings
    from draft_lightning.module import DraftModule
    from draft_lightning.rewards import AestheticReward
    from draft_lightning.samplers.settings import SamplingSettings

    torch.manual_seed(0)
    module = DraftModule(
        reward=AestheticReward(
            head="tiny:aesthetic", clip_model="tiny:clip", clip_pretrained="tiny:clip"
        ),
        pretrained_model=model,
        estimator=estimators.DraftK(k=2) if estimator == "DraftK" else estimators.DraftLV(n=2),
        sampling=SamplingSettings(num_steps=4, guidance_scale=3.5, resolution=32),
        frozen_dtype=frozen_dtype,
        sharding=ShardingSettings(vae="shard", reward="shard"),
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.trainable_parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return module


def gradients(module, prompts: list[str], rank: int, world_size: int, bf16: bool) -> dict:
    """The LoRA gradients of one step (whole tensors, gathered when sharded)."""
    from draft_lightning.models.sharding import full_tensor
    from draft_lightning.randomness import StepRandomness

    rng = StepRandomness(0, 0, 0, rank, world_size)
    # As Lightning's bf16-mixed: autocast without its weight cache (see models/sharding.py).
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
    with autocast if bf16 else nullcontext():
        loss = module.reward_loss(prompts, rng).loss
    loss.backward()
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return {
        name: full_tensor(p.grad).detach().clone() if p.grad is not None else None
        for name, p in named
    }


def main(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    # Build before the process group exists: once torch.distributed is initialised,
    # transformers' save_pretrained writes nothing on ranks > 0, so a tiny model built on
    # first use there would be incomplete.
    modules = {case: build(model, estimator, dtype) for case, model, estimator, dtype, _ in CASES}
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    meshes = {
        "shard": init_device_mesh("cpu", (world_size,)),
        "hybrid": init_device_mesh("cpu", (world_size, 1), mesh_dim_names=("replicate", "shard")),
    }
    local = len(PROMPTS) // world_size
    prompts = PROMPTS[rank * local : (rank + 1) * local]
    for case, _, _, dtype, mesh in CASES:
        module = modules[case]
        module.shard(meshes[mesh])
        grads = gradients(module, prompts, rank, world_size, bf16=dtype == "bfloat16")
        dtypes = sorted({str(p.dtype) for p in module.trainable_parameters()})
        if rank == 0:
            torch.save({"grads": grads, "lora_dtypes": dtypes}, out / f"{case}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
