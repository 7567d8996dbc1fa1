"""share_first_attention (models/guided_halves.py): the first self-attention of a guided SD
UNet call runs on one half of the batch, and nothing a user sees changes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import make_module

from draft_lightning.models.guided_halves import (
    SharedHalvesAttention,
    first_self_attention,
    halves_repeated,
)


def nonzero_adapter(module) -> None:
    """A LoRA that changes the model (a fresh one is the identity: B = 0)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)


class RowCounter:
    """Records the batch size each call of a wrapped attention processor sees."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.rows: list[int] = []

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.rows.append(hidden_states.shape[0])
        return self.inner(attn, hidden_states, *args, **kwargs)


@contextmanager
def counting(module) -> Iterator[RowCounter]:
    """Count the rows reaching the attention inside the shared-halves wrapper."""
    processor = first_self_attention(module.pipeline.denoiser).processor
    assert isinstance(processor, SharedHalvesAttention)
    counter = processor.inner = RowCounter(processor.inner)
    try:
        yield counter
    finally:
        processor.inner = counter.inner


@pytest.fixture(scope="module")
def pair(tiny_sd):
    """The same model and adapter with the option on (default) and off."""
    from draft_lightning.estimators import DraftK

    on = make_module(estimator=DraftK(2))
    off = make_module(estimator=DraftK(2), share_first_attention=False)
    nonzero_adapter(on)
    with torch.no_grad():
        for mine, theirs in zip(off.trainable_parameters(), on.trainable_parameters(), strict=True):
            mine.copy_(theirs)
    return on, off


def test_only_sd_unets_that_see_text_through_cross_attention_qualify(pair):
    on, off = pair
    assert isinstance(first_self_attention(on.pipeline.denoiser).processor, SharedHalvesAttention)
    assert not isinstance(
        first_self_attention(off.pipeline.denoiser).processor, SharedHalvesAttention
    )
    # SDXL's added conditioning mixes the pooled text into the time embedding: not shared.
    unet = on.pipeline.denoiser
    unet.register_to_config(addition_embed_type="text_time")
    try:
        assert first_self_attention(unet) is None
    finally:
        unet.register_to_config(addition_embed_type=None)
    assert first_self_attention(torch.nn.Linear(2, 2)) is None  # a transformer denoiser


def test_guided_sampling_is_unchanged_and_computes_the_first_attention_once(pair):
    on, off = pair
    with counting(on) as counter:
        images = on.generate(["a cat", "a dog"], [1, 2])
    torch.testing.assert_close(images, off.generate(["a cat", "a dog"], [1, 2]), rtol=0, atol=0)
    assert counter.rows and set(counter.rows) == {2}  # 2 images: 2 rows, not 4


def test_the_lora_gradient_is_unchanged(pair):
    from draft_lightning.randomness import StepRandomness

    grads = []
    for module in pair:
        module.zero_grad(set_to_none=True)
        step = module.reward_loss(["a cat", "a dog"], StepRandomness(0, 0, 0, 0, 1))
        step.loss.backward()
        grads.append([p.grad.clone() for p in module.trainable_parameters()])
    assert any(g.abs().max() > 0 for g in grads[1])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)


def test_unrepeated_batches_and_active_dropout_run_whole(pair):
    on, _ = pair
    unet = on.pipeline.denoiser
    attention = first_self_attention(unet)
    x = torch.randn(2, 16, attention.to_q.in_features)
    repeated = torch.cat([x, x])
    with counting(on) as counter:
        whole = attention(repeated)  # outside halves_repeated: computed as given
        with halves_repeated(unet):
            torch.testing.assert_close(attention(repeated), whole, rtol=0, atol=0)
            attention.to_q.lora_dropout["default"] = torch.nn.Dropout(0.5).train()
            try:
                attention(repeated)
            finally:
                attention.to_q.lora_dropout["default"] = torch.nn.Identity()
    assert counter.rows == [4, 2, 4]  # with dropout the halves would draw different masks


def test_per_block_checkpointing_recomputes_what_the_forward_did(pair):
    """checkpoint_blocks recomputes blocks in backward, outside the sampler's marking: the
    differentiated calls then run whole (else the recompute would not match the forward)."""
    from draft_lightning.estimators import DraftK
    from draft_lightning.randomness import StepRandomness

    on, off = pair
    blocks = make_module(estimator=DraftK(2), checkpoint_blocks=True)
    with torch.no_grad():
        for mine, theirs in zip(
            blocks.trainable_parameters(), on.trainable_parameters(), strict=True
        ):
            mine.copy_(theirs)
    off.zero_grad(set_to_none=True)
    off.reward_loss(["a cat", "a dog"], StepRandomness(0, 0, 0, 0, 1)).loss.backward()
    with counting(blocks) as counter:
        blocks.reward_loss(["a cat", "a dog"], StepRandomness(0, 0, 0, 0, 1)).loss.backward()
    # The two no-grad steps shared; the window's calls (and their recomputes) whole.
    assert counter.rows[:2] == [2, 2] and set(counter.rows[2:]) == {4}
    for got, want in zip(blocks.trainable_parameters(), off.trainable_parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-8)
