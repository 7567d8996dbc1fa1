"""Skip optimiser steps whose loss or gradient is NaN or inf; stop after too many in a row."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from draft_lightning.errors import ConfigError
from draft_lightning.models.sharding import full_tensor


class NonFiniteError(RuntimeError):
    """Too many consecutive optimiser steps had a non-finite loss or gradient."""


class NonFiniteGuard(Callback):
    """Skip the optimiser step when the loss or any LoRA gradient is NaN or inf.

    The gradients are set to None, so AdamW leaves the weights and its moments untouched.
    The check runs after DDP has averaged the gradients and its verdict is reduced across
    ranks, so every rank skips together (skipping on one rank alone would hang DDP).
    Skips are logged as `train/skipped_steps` (cumulative); after `patience` in a row the
    run stops with one line, its last checkpoint untouched.

    Args:
        patience: consecutive skipped steps after which the run stops.
    """

    def __init__(self, patience: int = 10) -> None:
        if patience < 1:
            raise ConfigError(f"NonFiniteGuard patience={patience} must be >= 1")
        self.patience = patience
        self.skipped = 0
        self.in_a_row = 0

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        bad = torch.zeros((), device=pl_module.device)
        norm = torch.full((), float("nan"), device=pl_module.device)
        if grads:
            norm = full_tensor(torch.nn.utils.get_total_norm(grads))  # sharded: every rank's
            bad = bad + (~torch.isfinite(norm)).float()
        loss = getattr(pl_module, "last_loss", None)
        if loss is not None:
            bad = bad + (~torch.isfinite(loss)).float()
        bad = trainer.strategy.reduce(bad, reduce_op="max")
        if bad.item() == 0:  # one host sync per step, the price of a consistent verdict
            self.in_a_row = 0
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=True)
            return
        for p in params:
            p.grad = None
        self.skipped += 1
        self.in_a_row += 1
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True)
        # This step's own norm (NaN/inf): without it the logger repeats the previous step's,
        # since the module finds no gradient to measure once they are dropped.
        pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        step = trainer.global_step + 1  # counted as the logs and checkpoints count it
        rank_zero_warn(
            f"non-finite loss or gradient in step {step}: optimiser step skipped "
            f"({self.in_a_row} in a row, {self.skipped} in total)"
        )
        if self.in_a_row >= self.patience:
            raise NonFiniteError(
                f"nonfinite_guard: steps {step - self.in_a_row + 1} to {step} "
                f"({self.in_a_row} in a row, patience={self.patience}) had a non-finite loss "
                "or gradient; stopped. The last checkpoint is intact: lower the learning rate "
                "or check the reward, then resume with --ckpt_path last"
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict["skipped"]
        self.in_a_row = state_dict["in_a_row"]
