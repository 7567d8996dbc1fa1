"""Live tensor memory of one training step, by what it holds, and its peak.

A TorchDispatchMode sees every tensor an operation creates (on the meta device too, where no
allocator exists), so the bytes of live storages can be summed op by op; each storage is
counted once however many views share it, and leaves the sum when it is freed. torch's own
MemTracker does the same accounting but splits by forward/backward phase; the plan needs the
split by role, which needs the saved-tensor hooks below. FLOPs are counted in the same pass
with torch.utils.flop_counter's per-op formulas (FlopCounterMode itself would add module
hooks that keep tensors alive).

Roles: frozen weights (parameters without gradient, buffers); trainable (LoRA weights, their
gradients and the optimiser's state); saved (tensors autograd keeps for backward, outside
checkpointed regions); transient (everything else alive: outputs in flight, a checkpointed
call's recomputed activations, gradients flowing back, attention workspaces).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

ROLES = ("frozen", "trainable", "saved", "transient")


@dataclass
class Peak:
    """Bytes alive at the step's peak, by role."""

    bytes: int = 0
    by_role: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))


class LiveMemory(TorchDispatchMode):
    """Sums the bytes of live tensor storages by role while active; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.owner: dict[int, list] = {}  # storage key -> [role, bytes]
        self.totals = dict.fromkeys(ROLES, 0)
        self.peak = Peak()
        self.in_optimizer = False
        self.flops = 0  # counted with torch.utils.flop_counter's formulas, op by op
        self._handles: list = []
        self._refs: dict[int, weakref.ref] = {}

    # --- what exists before the step -----------------------------------------------------

    def add_module(self, module: torch.nn.Module) -> None:
        for parameter in module.parameters():
            self._add(parameter, "trainable" if parameter.requires_grad else "frozen")
        for buffer in module.buffers():
            self._add(buffer, "frozen")
        for parameter in module.parameters():
            if parameter.requires_grad:
                self._handles.append(
                    parameter.register_post_accumulate_grad_hook(self._gradient_accumulated)
                )

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    self._add(value, "trainable")

    # --- bookkeeping ------------------------------------------------------------------------

    def _add(self, tensor: torch.Tensor, role: str) -> None:
        if type(tensor).__name__ == "FunctionalTensor" or tensor.is_sparse:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        entry = self.owner.get(key)
        if entry is not None:
            if role != "transient" and entry[0] != role:
                self.totals[entry[0]] -= entry[1]
                entry[0] = role
                self.totals[role] += entry[1]
            return
        size = storage.nbytes()
        self.owner[key] = [role, size]
        self.totals[role] += size
        self._refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))

    def _free(self, key: int) -> None:
        self._refs.pop(key, None)
        entry = self.owner.pop(key, None)
        if entry is not None:
            self.totals[entry[0]] -= entry[1]

    def _retag(self, tensor: torch.Tensor, role: str, only_from: str | None = None) -> None:
        entry = self.owner.get(tensor.untyped_storage()._cdata)
        if entry is None or (only_from is not None and entry[0] != only_from):
            return
        self.totals[entry[0]] -= entry[1]
        entry[0] = role
        self.totals[role] += entry[1]

    def _gradient_accumulated(self, parameter: torch.Tensor) -> None:
        if parameter.grad is not None:
            self._retag(parameter.grad, "trainable")

    def _note_peak(self) -> None:
        total = sum(self.totals.values())
        if total > self.peak.bytes:
            self.peak = Peak(total, dict(self.totals))

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._retag(tensor, "saved", only_from="transient")
        return tensor

    # --- the mode -----------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.flops += count(*args, **kwargs, out_val=out)
        role = "trainable" if self.in_optimizer else "transient"
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor, role)
        self._note_peak()
        return out

    def __enter__(self):
        def before(*_):
            self.in_optimizer = True

        def after(*_):
            self.in_optimizer = False

        self._handles += [
            register_optimizer_step_pre_hook(before),
            register_optimizer_step_post_hook(after),
        ]
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._saved.__enter__()
        self._note_peak()
        return super().__enter__()

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._saved.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return result
