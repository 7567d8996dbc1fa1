"""Activation checkpointing of a frozen network's blocks, independent of train/eval mode.

transformers only checkpoints layers of a module in training mode, but rewards stay in eval
mode for good (`Reward.train()`), so we wrap the blocks ourselves. Checkpointing block by
block (not the whole forward at once) is what lowers the peak: the backward pass then holds
one block's activations at a time instead of the whole tower's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointed(nn.Module):
    """Runs `block` under non-reentrant checkpointing whenever autograd is recording."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(self.block, *args, use_reentrant=False, **kwargs)
        return self.block(*args, **kwargs)


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Wrap every block of `blocks` in place (after weights are loaded: keys gain `.block`)."""
    for i, block in enumerate(blocks):
        if not isinstance(block, Checkpointed):
            blocks[i] = Checkpointed(block)
