"""The peak of a real step on the CPU, measured independently of the plan's accounting.

The plan sums tensor storages op by op (tracker.py); this reads the CPU allocator instead:
torch.profiler with `profile_memory=True` records every allocation and free the allocator
makes, with its address and signed size. The running sum, in time order, of the allocations
made during the step and of the frees of those same blocks is the memory the step added; its
maximum plus what was resident before the step (the module's weights and buffers, the
optimiser's state) is the measured peak.

Frees of blocks allocated before the step are left out: the allocator reports them too when
an earlier profiled region (an earlier measurement in the same process) allocated them, so a
garbage collection of an earlier step's leftovers during this step would otherwise subtract
memory this step never added (the order-dependent failures of
tests/planning/test_plan.py; tested in tests/planning/test_measure.py).
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
    """`resident` + the highest running sum of the blocks allocated (and not yet freed) while
    `step` runs."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    # The raw allocator records, with their addresses (the event tree nests them in the ops
    # that made them).
    records, pending = [], list(profiler.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            records.append((event.start_time_ns, fields.ptr, fields.alloc_size))
    records.sort(key=lambda record: record[0])
    allocated: dict[int, int] = {}  # address -> size of the blocks this step allocated
    live = peak = 0
    for _, address, nbytes in records:
        if nbytes > 0:
            allocated[address] = nbytes
        elif address in allocated:
            nbytes = -allocated.pop(address)
        else:
            continue  # allocated before the step
        live += nbytes
        peak = max(peak, live)
    return resident + peak
