"""Randomness of one training step that does not depend on how many ranks share it.

Every rank draws the whole global batch from one generator seeded by (seed, global step,
micro-batch) and keeps its own rows: global row `rank + i * world_size`, the order in which
the prompt stream deals prompts to ranks. So a step on 2 ranks x batch B draws exactly the
noise of a step on 1 rank x batch 2B, no two ranks share noise, and a run is reproducible
from its seed. Drawing the global batch costs W x the local noise: negligible next to a UNet.
"""

from __future__ import annotations

import numpy as np
import torch


class StepRandomness:
    """Draws for one training step; rows are interleaved across ranks (see module doc)."""

    def __init__(self, seed: int, step: int, micro_batch: int, rank: int = 0, world_size: int = 1):
        state = np.random.SeedSequence([seed, step, micro_batch]).generate_state(1, np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(state))
        self.rank = rank
        self.world_size = world_size

    def mine(self, global_rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a draw made for the global batch."""
        return global_rows[self.rank :: self.world_size]

    def randn(self, rows: int, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
        """Standard normal noise for `rows` local rows (CPU; move it where it is needed)."""
        full = torch.randn((rows * self.world_size, *shape), generator=self.generator, dtype=dtype)
        return self.mine(full)

    def shared_randint(self, low: int, high: int) -> int:
        """One integer in [low, high) that every rank draws alike (one choice per global batch)."""
        return int(torch.randint(low, high, (1,), generator=self.generator))
