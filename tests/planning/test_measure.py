"""The CPU peak measurement the plan is checked against (planning/measure.py)."""

from __future__ import annotations

import torch

from draft_lightning.planning.measure import measured_peak

MiB = 2**20


def test_measured_peak_is_the_highest_sum_of_the_blocks_the_step_holds():
    def step():
        a = torch.empty(MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)  # 3 MiB held here
        del a, b
        torch.empty(MiB, dtype=torch.uint8)

    assert measured_peak(step, resident=5) == 3 * MiB + 5


def test_frees_of_memory_an_earlier_measurement_allocated_do_not_count():
    """The allocator reports the free of a block an earlier profiled region allocated (a
    garbage collection of an earlier step's leftovers during this step): it must not lower
    this step's peak (planned 33.8 MB against a measured 15.8 MB after tests/training)."""
    leftovers = []
    measured_peak(lambda: leftovers.append(torch.empty(4 * MiB, dtype=torch.uint8)), 0)

    def step():
        leftovers.clear()  # freed during this step, allocated before it
        torch.empty(MiB, dtype=torch.uint8)

    assert measured_peak(step, resident=0) == MiB
