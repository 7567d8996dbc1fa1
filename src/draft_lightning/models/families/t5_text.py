"""Tokenising and T5-encoding prompts the way diffusers' FLUX and SD3 pipelines do.

Both pipelines pad (and truncate) every prompt to a fixed length, CLIP's to its tokenizer's
77 tokens and T5's to `max_sequence_length`, with no attention mask: the padding tokens'
hidden states are part of the conditioning the models were trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def padded_token_ids(
    tokenizer, prompts: Sequence[str], max_length: int, device: torch.device
) -> torch.Tensor:
    """(batch, max_length) token ids, padded and truncated to exactly `max_length`."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def encoder_device(encoder: nn.Module) -> torch.device:
    return next(encoder.parameters()).device


@torch.no_grad()
def t5_hidden_states(
    tokenizer, encoder: nn.Module, prompts: Sequence[str], max_length: int
) -> torch.Tensor:
    """T5's last hidden states, (batch, max_length, d_model), in the encoder's dtype."""
    ids = padded_token_ids(tokenizer, prompts, max_length, encoder_device(encoder))
    return encoder(ids)[0].to(encoder.dtype)
