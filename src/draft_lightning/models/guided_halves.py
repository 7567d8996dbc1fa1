"""The first self-attention of a guided UNet call, computed once for both halves.

Why: with classifier-free guidance the UNet sees one batch [x; x] (unconditional rows, then
conditional rows, the same latents and timestep). In SD 1.x/2.x UNets the text enters only
through cross-attention, so every layer before the first cross-attention computes the same
values for both halves, the first self-attention among them: at the highest resolution it is
the most expensive single operation of a call (on the tiny UNet: one of its three
1024-token self-attentions, about 13% of a call; measured in docs/benchmarks.md). Running it
on one half and repeating the result is exact: the rows are the same numbers, and in a
differentiated step the repeated output's gradient is the sum of both halves' as before.

The sampler says when a call's halves repeat (`halves_repeated`); the wrapper only acts then
(under per-block checkpointing only in calls without gradient), and only on plain
self-attention (no mask, no encoder states, no active dropout, which would
draw different masks for the two halves). UNets that mix text into the time embedding
(SDXL's added conditioning, class or text embeddings) and transformer denoisers (FLUX.1,
SD3, whose text tokens join the first block) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

ATTRIBUTE = "_shared_first_attention"  # where the installed wrapper is found on the UNet
# UNet config keys through which text (or anything per-row besides the latents) could reach
# the layers before the first cross-attention.
TEXT_BEFORE_CROSS_ATTENTION = (
    "addition_embed_type",
    "class_embed_type",
    "encoder_hid_dim_type",
    "time_cond_proj_dim",
)


class SharedHalvesAttention:
    """A diffusers attention processor that, while `repeated` is set, runs the wrapped
    processor on the first half of the batch and repeats its output for the second."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.repeated = False

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        plain = (
            encoder_hidden_states is None
            and attention_mask is None
            and temb is None
            and hidden_states.shape[0] % 2 == 0
            and not dropout_active(attn)
        )
        if not (self.repeated and plain):
            return self.inner(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        half = self.inner(attn, hidden_states[: hidden_states.shape[0] // 2], *args, **kwargs)
        return torch.cat([half, half])


def dropout_active(module: nn.Module) -> bool:
    """Whether any dropout inside `module` (the attention's, its LoRA's) would drop now."""
    return any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in module.modules())


def first_self_attention(unet: nn.Module) -> nn.Module | None:
    """The first transformer block's self-attention of a UNet whose text enters only through
    cross-attention; None for any other denoiser."""
    config = getattr(unet, "config", None)
    blocks = getattr(unet, "down_blocks", None)
    if config is None or blocks is None:
        return None
    if any(config.get(key) is not None for key in TEXT_BEFORE_CROSS_ATTENTION):
        return None
    for block in blocks:
        for transformer in getattr(block, "attentions", None) or ():
            inner_blocks = getattr(transformer, "transformer_blocks", None)
            if not inner_blocks:
                return None
            attention = getattr(inner_blocks[0], "attn1", None)
            if attention is None or getattr(inner_blocks[0], "only_cross_attention", False):
                return None
            return attention
    return None


def share_first_attention(unet: nn.Module) -> bool:
    """Wrap the UNet's first self-attention processor (see the module doc); False where the
    UNet does not qualify. Called again, it changes nothing."""
    attention = first_self_attention(unet)
    if attention is None:
        return False
    if not isinstance(attention.processor, SharedHalvesAttention):
        attention.set_processor(SharedHalvesAttention(attention.processor))
        object.__setattr__(unet, ATTRIBUTE, attention)
    return True


@contextmanager
def halves_repeated(denoiser: nn.Module) -> Iterator[None]:
    """Within the block, the denoiser's calls get batches whose second half repeats the first
    (same latents, same timesteps); a denoiser without the wrapper is unaffected."""
    attention = getattr(denoiser, ATTRIBUTE, None)
    processor = getattr(attention, "processor", None)
    if not isinstance(processor, SharedHalvesAttention) or processor.repeated:
        yield
        return
    if torch.is_grad_enabled() and getattr(denoiser, "is_gradient_checkpointing", False):
        # Per-block checkpointing (checkpoint_blocks) recomputes blocks in the backward pass,
        # outside this block, where the halves would not be marked: the recompute must do
        # what the forward did, so differentiated calls then run whole.
        yield
        return
    processor.repeated = True
    try:
        yield
    finally:
        processor.repeated = False
