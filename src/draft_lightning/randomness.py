"""Randomness: one training step's draws, independent of how many ranks share it, and every
rank's RNG states for checkpoints.

Every rank draws the whole global batch from one generator seeded by (seed, global step,
micro-batch) and keeps its own block of rows: rank r of R with local batch B keeps global
rows [r B, (r + 1) B), the block of the global batch that the prompt stream deals it
(data/stream.py). So a step on 2 ranks x batch B draws exactly the noise of a step on 1 rank
x batch 2B, no two ranks share noise, and a run is reproducible from its seed. Drawing the
global batch costs R x the local noise: negligible next to a UNet.

Lightning checkpoints do not carry RNG states. Training noise comes from the generators above
and needs none, but anything drawing from the global RNGs (LoRA dropout, a user's reward)
would make a resumed run diverge without them: every rank's states are saved in a form that
loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import random

import numpy as np
import torch


class StepRandomness:
    """Draws for one training step; each rank keeps its block of the global batch."""

    def __init__(self, seed: int, step: int, micro_batch: int, rank: int = 0, world_size: int = 1):
        state = np.random.SeedSequence([seed, step, micro_batch]).generate_state(1, np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(state))
        self.rank = rank
        self.world_size = world_size

    def mine(self, global_rows: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """This rank's rows of a draw made for the global batch; with `copies` > 1 the rows
        are copy-major ([copy 0 of every prompt, copy 1 of every prompt, ...])."""
        per_copy = global_rows.reshape(copies, -1, *global_rows.shape[1:])
        local = per_copy.shape[1] // self.world_size
        block = per_copy[:, self.rank * local : (self.rank + 1) * local]
        return block.reshape(-1, *global_rows.shape[1:])

    def randn(
        self, rows: int, shape: tuple[int, ...], dtype=torch.float32, copies: int = 1
    ) -> torch.Tensor:
        """Standard normal noise for `rows` local rows (CPU; move it where it is needed)."""
        full = torch.randn((rows * self.world_size, *shape), generator=self.generator, dtype=dtype)
        return self.mine(full, copies)

    def shared_randint(self, low: int, high: int) -> int:
        """One integer in [low, high) that every rank draws alike (one choice per global batch)."""
        return int(torch.randint(low, high, (1,), generator=self.generator))


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
