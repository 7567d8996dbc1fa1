"""The trained adapter exported in diffusers' format at every checkpoint and at the end."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from draft_lightning.training.run_files import run_dir


class LoraExport(Callback):
    """Export the trained adapter in diffusers format at every checkpoint and at the end:
    `<log_dir>/lora/step=<N>/pytorch_lora_weights.safetensors` and `<log_dir>/lora/last/`,
    loadable with `pipe.load_lora_weights(dir)`.

    Only rank 0 writes. Under DDP nothing here waits on other ranks; a sharded adapter is first
    gathered, a collective that every rank reaches because Lightning runs both hooks on every
    rank, so the file is the whole adapter, as an unsharded run writes it.

    Args:
        dirname: folder under the run directory.
        keep_steps: keep one `step=<N>` export per checkpoint (else only `last`).
    """

    def __init__(self, dirname: str = "lora", keep_steps: bool = True) -> None:
        self.dirname = dirname
        self.keep_steps = keep_steps

    def export(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        state = pl_module.pipeline.lora_state()  # gathered on every rank when sharded
        if trainer.global_rank != 0:
            return
        root = run_dir(trainer) / self.dirname
        # Written by the family's own pipeline class, so its load_lora_weights reads it.
        if self.keep_steps:
            pl_module.pipeline.save_lora(root / f"step={step}", state)
        pl_module.pipeline.save_lora(root / "last", state)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.export(trainer, pl_module, checkpoint["global_step"])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module, trainer.global_step)
