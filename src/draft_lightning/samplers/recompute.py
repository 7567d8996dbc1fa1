"""A checkpointed denoiser call whose discarded forward pass runs the fast no-grad path.

Gradient checkpointing keeps only a call's inputs and recomputes the call in the backward
pass, so the activations of its forward pass are thrown away as they are made. torch's
non-reentrant checkpoint still runs that forward eagerly with autograd on. When the sampler
has a compiled denoiser (`compile_unet`), `recompute_in_backward` runs the forward without
autograd, through the compiled graph the no-grad steps already use, and recomputes the call
eagerly with autograd in the backward pass: the value within float tolerance of eager, and
the gradient of the recomputed call at the same inputs. With full DRaFT every call of the
chain is such a call, so this is where most of its forward time goes.

Written by hand because torch.utils.checkpoint offers either an autograd-on forward
(non-reentrant) or a no-grad one whose parameter gradients reach only `.backward()`, not
`torch.autograd.grad` (reentrant). Here the trainable parameters are inputs of the autograd
function, so both work, and DDP sees their gradients arrive as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import fields, is_dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def dropout_active(module: nn.Module) -> bool:
    """Whether a call of `module` draws random numbers (dropout in training mode): its
    recompute would then need the same draws, which a compiled forward does not promise."""
    return any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in module.modules())


def carries_gradient(value) -> bool:
    """Whether any tensor in `value` (tensors, dicts, sequences, dataclasses) requires grad."""
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, dict):
        return any(carries_gradient(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(carries_gradient(v) for v in value)
    if is_dataclass(value):
        return any(carries_gradient(getattr(value, f.name)) for f in fields(value))
    return False


def recompute_in_backward(
    call: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    parameters: Sequence[nn.Parameter],
) -> torch.Tensor:
    """`call(latents)` computed without autograd (whatever fast path `call` takes then), with
    the gradient to `latents` and `parameters` taken from an eager recompute in backward.

    `call` must be deterministic and must differentiate only through `latents` and
    `parameters` (the sampler checks both before choosing this)."""
    return _RecomputeInBackward.apply(call, latents, *parameters)


class _RecomputeInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, latents, *parameters):
        ctx.call = call
        ctx.autocast = _autocast_states(latents.device.type)
        ctx.save_for_backward(latents, *parameters)
        return call(latents)  # autograd.Function.forward runs without autograd

    @staticmethod
    @once_differentiable  # the recompute's graph is not kept: a second derivative would be 0
    def backward(ctx, grad_output):
        latents, *parameters = ctx.saved_tensors
        needed = ctx.needs_input_grad[1:]
        with torch.enable_grad(), _autocast(ctx.autocast):
            x = latents.detach().requires_grad_(needed[0])
            output = ctx.call(x)
        inputs = [t for t, need in zip([x, *parameters], needed, strict=True) if need]
        grads = iter(torch.autograd.grad(output, inputs, grad_output, allow_unused=True))
        return (None, *(next(grads) if need else None for need in needed))


AutocastStates = tuple[tuple[str, torch.dtype, bool], ...]  # device, dtype, cache enabled


def _autocast_states(device_type: str) -> AutocastStates:
    """The autocasts the forward ran under (its device's, and the CPU's beside a GPU), to
    re-enter for the recompute as torch's own checkpoint does: backward runs outside the
    forward's autocast (and on a GPU, on another thread)."""
    states = []
    for device in dict.fromkeys([device_type, "cpu"]):
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            states.append((device, dtype, torch.is_autocast_cache_enabled()))
    return tuple(states)


def _autocast(states: AutocastStates) -> AbstractContextManager:
    stack = ExitStack()
    for device, dtype, cache in states:
        stack.enter_context(torch.autocast(device, dtype=dtype, cache_enabled=cache))
    return stack
