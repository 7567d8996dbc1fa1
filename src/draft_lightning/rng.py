"""Every rank's RNG states in a form that loads with torch.load(weights_only=True).

Lightning checkpoints do not carry RNG states. Training noise here comes from generators
seeded by (seed, step, rank) and needs none, but anything drawing from the global RNGs
(LoRA dropout, a user's reward) would make a resumed run diverge without them.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def collect_rng_states() -> dict:
    """This process's torch (CPU and CUDA), numpy and python RNG states, tensors and ints only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(python_state), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def gather_rng_states(trainer) -> list[dict]:
    """All ranks' states, indexed by global rank (every rank calls this when a checkpoint is
    dumped; only rank 0 writes the file)."""
    local = collect_rng_states()
    if trainer is None or trainer.world_size == 1:
        return [local]
    gathered: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered
