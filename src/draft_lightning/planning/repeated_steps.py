"""The no-grad steps before the gradient window, planned once and counted for all.

Every step before the window runs under torch.no_grad on latents of the same shape: no graph,
nothing of a step outlives it except the next latent, which replaces the previous one. So each
of them has the same FLOPs and leaves the same live memory, and their peak is the same. The
plan traces the first `traced` of them op by op (two: the first starts from the initial noise
and the step after it from a previous step's result, which is the state every later one
starts from) and for each later one adds the last traced step's FLOPs without running it.
That turns a 50-step chain on the meta device (minutes of dispatch) into two steps.

It enters through the sampler's own `no_grad_context` hook, which the sampler opens around
exactly those steps; the steps in the window run unchanged. The planned-vs-measured tests
(tests/planning/test_plan.py) compare the result with a real measured step that runs them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from draft_lightning.planning.tracker import LiveMemory
from draft_lightning.samplers.base import Sampler, SampleResult


class RepeatedNoGradSteps:
    """A `no_grad_context` for planning: inside it, the sampler's steps after the first
    `traced` return the last traced step's result and add its FLOPs to `memory`."""

    def __init__(self, sampler: Sampler, memory: LiveMemory, traced: int = 2) -> None:
        if traced < 1:
            raise ValueError(f"traced={traced} must be >= 1")
        self.sampler = sampler
        self.memory = memory
        self.traced = traced
        self.inner = sampler.no_grad_context  # e.g. the LoRA merged into the base weights
        self.steps_run = 0  # traced op by op
        self.steps_counted = 0  # accounted for without running

    @contextmanager
    def __call__(self) -> Iterator[None]:
        sampler = self.sampler
        last: list = []  # [result, FLOPs] of the last traced step; only it is kept alive
        runs = [0]  # steps traced in this no-grad stretch

        def step(latents, index, text, rng=None, in_window=None) -> SampleResult:
            if runs[0] < self.traced:
                before = self.memory.flops
                result = Sampler.step(sampler, latents, index, text, rng, in_window)
                last[:] = [result, self.memory.flops - before]
                runs[0] += 1
                self.steps_run += 1
                return result
            result, flops = last
            self.memory.flops += flops
            self.steps_counted += 1
            return result

        with self.inner() if self.inner is not None else nullcontext():
            sampler.step = step  # this instance only, and only around the no-grad steps
            try:
                yield
            finally:
                del sampler.step


@contextmanager
def repeated_no_grad_steps(
    sampler: Sampler, memory: LiveMemory, traced: int = 2
) -> Iterator[RepeatedNoGradSteps]:
    """While active, `sampler`'s no-grad steps are planned as `RepeatedNoGradSteps` does."""
    shortcut = RepeatedNoGradSteps(sampler, memory, traced)
    sampler.no_grad_context = shortcut
    try:
        yield shortcut
    finally:
        sampler.no_grad_context = shortcut.inner
