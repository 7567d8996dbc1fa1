"""A callback that sends a run through `compile_unet`'s code paths without torch.compile."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import stand_in_for_compiled
from lightning.pytorch import Callback

import draft_lightning.samplers.base as sampler_base


class CompiledStandIn(Callback):
    """Put the eager denoiser where `compile_unet` keeps its compiled graph, so that a run
    (here: each rank of a distributed one) takes the compiled paths, the no-grad steps and
    the recompute-in-backward of each differentiated call (samplers/recompute.py), without
    minutes of compiling per process. Writes each rank's count of recomputed calls to
    <folder>/rank<r>.json.

    Args:
        folder: where the counts go.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.recomputed = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        stand_in_for_compiled(pl_module)
        recompute = sampler_base.recompute_in_backward

        def counted(*args, **kwargs):
            self.recomputed += 1
            return recompute(*args, **kwargs)

        sampler_base.recompute_in_backward = counted

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"recomputed": self.recomputed}))
