"""Randomness of one training step that does not depend on how many ranks share it.

Every rank draws the whole global batch from one generator seeded by (seed, global step,
micro-batch) and keeps its own block of rows: rank r of R with local batch B keeps global
rows [r B, (r + 1) B), the block of the global batch that the prompt stream deals it
(data_stream.py). So a step on 2 ranks x batch B draws exactly the noise of a step on 1 rank
x batch 2B, no two ranks share noise, and a run is reproducible from its seed. Drawing the
global batch costs R x the local noise: negligible next to a UNet.
"""

from __future__ import annotations

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
