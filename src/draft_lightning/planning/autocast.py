"""Autocast for the meta device, where torch has none.

`precision: bf16-mixed` runs the step under torch.autocast on the accelerator: matmuls and
convolutions in bfloat16, norms, softmax and reductions in float32. The meta device has no
autocast dispatch key, so the plan reproduces autocast's casting rules (its CUDA op lists,
abridged to what diffusion models and CLIP call) as a TorchFunctionMode. That runs above
autograd, like autocast itself: the casts are recorded in the graph and what backward saves is
the cast copy, as on the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint_module
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

Tensor = torch.Tensor
# Cast to the autocast dtype (autocast's "lower precision" list).
LOWER = {
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.linear,
    F.scaled_dot_product_attention,
    F.prelu,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.einsum,
    Tensor.matmul,
    Tensor.__matmul__,
    Tensor.mm,
    Tensor.bmm,
}
# Computed in float32 (autocast's "float32" list).
FLOAT32 = {
    F.layer_norm,
    F.group_norm,
    F.softmax,
    F.log_softmax,
    F.cosine_similarity,
    F.mse_loss,
    F.normalize,
    torch.softmax,
    torch.log_softmax,
    torch.exp,
    torch.pow,
    torch.rsqrt,
    torch.norm,
    torch.cumsum,
    Tensor.softmax,
    Tensor.log_softmax,
    Tensor.pow,
    Tensor.exp,
    Tensor.rsqrt,
    Tensor.norm,
    Tensor.__pow__,
}
# The widest floating type of the inputs.
PROMOTE = {torch.cat, torch.stack, torch.addcmul, torch.addcdiv, torch.index_put}


@contextmanager
def meta_autocast(precision: str | None) -> Iterator[None]:
    """The autocast Lightning's `precision` implies, for the meta device (nothing for full
    precision). The autograd engine runs backward without Python modes, so a checkpointed
    region's recompute enters the mode again itself, as torch's checkpoint does with autocast."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    if dtype is None:
        yield
        return
    name = "_checkpoint_without_reentrant_generator_impl"  # what checkpoint() calls
    generator = getattr(checkpoint_module, name)

    def with_autocast(fn, *args, **kwargs):
        def run(*inner, **inner_kwargs):
            with MetaAutocast(dtype):
                return fn(*inner, **inner_kwargs)

        return generator(run, *args, **kwargs)

    with (
        mock.patch.object(checkpoint_module, name, with_autocast),
        MetaAutocast(dtype),
    ):
        yield


def _floating(value) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point()


class MetaAutocast(TorchFunctionMode):
    """torch.autocast's casts for meta tensors, at `dtype`."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = None
        if func in LOWER:
            target = self.dtype
        elif func in FLOAT32:
            target = torch.float32
        elif func in PROMOTE:
            floating = [t.dtype for t in _flat(args) if _floating(t)]
            if len(set(floating)) > 1:
                target = torch.float32 if torch.float32 in floating else floating[0]
        if target is not None:

            def cast(value):
                if _floating(value) and value.device.type == "meta" and value.dtype != target:
                    return value.to(target)
                return value

            args, kwargs = tree_map(cast, (args, kwargs))
        return func(*args, **kwargs)


def _flat(value):
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flat(item)
    else:
        yield value
