"""The peak of a real step on the CPU, measured independently of the plan's accounting.

The plan sums tensor storages op by op (tracker.py); this reads the CPU allocator instead:
torch.profiler with `profile_memory=True` records every allocation and free the allocator
makes ("[memory]" events with signed byte counts), whose running sum in time order is the
bytes allocated during the step; its maximum plus what was resident before the step (the
module's weights and buffers, the optimiser's state) is the measured peak.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def resident_bytes(*holders) -> int:
    """Bytes of the distinct storages of modules' parameters and buffers and optimisers'
    state tensors."""
    seen: dict[int, int] = {}
    for holder in holders:
        if isinstance(holder, torch.nn.Module):
            tensors = [*holder.parameters(), *holder.buffers()]
        else:
            tensors = [v for s in holder.state.values() for v in s.values()]
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def measured_peak(step: Callable[[], object], resident: int) -> int:
    """`resident` + the highest running sum of the allocator's events while `step` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    # The raw allocator records (FunctionEvents fold them into the ops that made them).
    records = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for record in records:
        live += record.nbytes()
        peak = max(peak, live)
    return resident + peak
