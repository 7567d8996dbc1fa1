"""samplers/recompute.py: the forward of a checkpointed call runs without autograd, the
backward recomputes it with autograd (under the forward's autocast) and hands the gradient
to `torch.autograd.grad` and `.backward()` alike; the sampler takes this path only with a
compiled denoiser and falls back to torch's checkpoint when a call draws random numbers."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module, stand_in_for_compiled
from torch import nn

from draft_lightning.estimators import Draft
from draft_lightning.models.lora import LoraSettings
from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.samplers.recompute import carries_gradient, recompute_in_backward


class Recorded(nn.Module):
    """A two-layer call that notes, per call, whether autograd and autocast were on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(4, 8), nn.Linear(8, 4)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return self.second(torch.tanh(self.first(x))).float()


def test_gradients_match_plain_autograd_through_grad_and_backward():
    call = Recorded()
    params = list(call.parameters())
    x = torch.randn(3, 4, requires_grad=True)
    target = torch.randn(3, 4)

    def loss(out):
        return ((out - target) ** 2).sum()

    want = torch.autograd.grad(loss(call(x)), [x, *params])
    got = torch.autograd.grad(loss(recompute_in_backward(call, x, params)), [x, *params])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    loss(recompute_in_backward(call, x, params)).backward()  # as Lightning calls it
    for p, w in zip([x, *params], want, strict=True):
        torch.testing.assert_close(p.grad, w)


def test_forward_without_autograd_recompute_with_it_under_the_same_autocast():
    call = Recorded()
    x = torch.randn(3, 4)  # a detached latent: only the parameters need gradient
    recompute_in_backward(call, x, list(call.parameters())).sum().backward()
    assert call.seen == [(False, False), (True, False)]
    assert x.grad is None and call.first.weight.grad is not None
    call.seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = recompute_in_backward(call, x, list(call.parameters()))
    out.sum().backward()  # outside autocast, as Lightning runs backward
    assert call.seen == [(False, True), (True, True)]


def test_carries_gradient_looks_inside_conditioning():
    plain = torch.zeros(2, 3)
    assert not carries_gradient((Conditioning({"a": plain}, {"a": plain}), plain))
    nested = Conditioning({"a": plain, "added": {"b": torch.zeros(2, requires_grad=True)}})
    assert carries_gradient((nested,))


def test_sampler_uses_it_with_a_compiled_denoiser_and_not_with_active_dropout(tiny_sd):
    module = make_module(estimator=Draft(), lora=LoraSettings(rank=4, dropout=0.1))
    stand_in = stand_in_for_compiled(module)
    module.pipeline.denoiser.train()  # LoRA dropout draws masks: recomputing needs torch's
    module.training_step({"prompts": ["a cat"]}, 0).backward()
    assert stand_in.calls == 0
    module.pipeline.denoiser.eval()  # no dropout: every call's forward runs through it
    module.training_step({"prompts": ["a cat"]}, 0).backward()
    assert stand_in.calls == module.sampling.num_steps


def test_a_second_derivative_is_refused_not_silently_zero():
    call = Recorded()
    x = torch.randn(3, 4, requires_grad=True)
    out = recompute_in_backward(call, x, list(call.parameters()))
    (grad,) = torch.autograd.grad(out.pow(2).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
