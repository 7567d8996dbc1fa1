"""The plan against reality: one planned step (meta device, no weights) of every estimator on
the tiny model, and the same step run for real on the CPU with its peak read from the
allocator's records (planning/measure.py); and the sizes `--memory` accepts."""

from __future__ import annotations

import functools
from unittest import mock

import pytest
import torch

from draft_lightning.cli import _cli_class
from draft_lightning.errors import ConfigError
from draft_lightning.planning.command import build, parse_fit
from draft_lightning.planning.measure import measured_peak, resident_bytes
from draft_lightning.planning.plan import (
    largest_batch,
    make_optimizer,
    parse_memory,
    plan_step,
    training_step,
)
from draft_lightning.samplers.base import Sampler

TINY = ["--config", "configs/draft_lv.yaml", "--config", "configs/cpu_tiny.yaml"]
FEW_STEPS = ["--model.sampling.num_steps", "4"]
ESTIMATORS = {
    "draft_lv": [],
    "draft_1": ["--model.estimator", "draft_lightning.estimators.DraftK"],
    "draft_k3": [
        "--model.estimator",
        "draft_lightning.estimators.DraftK",
        "--model.estimator.k",
        "3",
    ],
    "draft_full": ["--model.estimator", "draft_lightning.estimators.Draft"],
}


def real_module(args: list[str]):
    """The same config built with its (tiny, random) weights, as `lightning fit` builds it."""
    return parse_fit(args, _cli_class()).model


@functools.cache
def planned(estimator: str):
    """(module, optimizer, batch, precision, its first plan) of the tiny config with
    `estimator`, built weightless once and shared by the tests below."""
    module, batch, precision = build([*TINY, *FEW_STEPS, *ESTIMATORS[estimator]], _cli_class())
    optimizer = make_optimizer(module)
    return module, optimizer, batch, precision, plan_step(module, optimizer, batch, precision)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_planned_peak_matches_the_measured_step(estimator):
    planned_module, _, batch, precision, plan = planned(estimator)
    assert next(planned_module.pipeline.denoiser.parameters()).device.type == "meta"

    module = real_module([*TINY, *FEW_STEPS, *ESTIMATORS[estimator]])
    optimizer = make_optimizer(module)
    measured = measured_peak(
        lambda: training_step(module, optimizer, batch, precision),
        resident_bytes(module, optimizer),
    )
    assert plan.peak_bytes == pytest.approx(measured, rel=0.10)
    roles = plan.peak.by_role
    frozen = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in [*module.parameters(), *module.buffers()]
        if not t.requires_grad
    }
    assert roles["frozen"] == sum(frozen.values())  # the weights, exactly
    assert sum(roles.values()) == plan.peak_bytes
    assert plan.flops > 0


@pytest.mark.parametrize("estimator", ["draft_lv", "draft_1"])
def test_no_grad_steps_planned_once_plan_what_tracing_them_all_plans(estimator):
    """The shortcut (repeated_steps.py) against the plan that traces every step op by op."""
    module, optimizer, batch, precision, _ = planned(estimator)  # prompt cache filled
    every = plan_step(module, optimizer, batch, precision, trace_every_step=True)
    calls = []

    def step(sampler, *args, **kwargs):  # counts the steps run (a Mock would keep their inputs)
        calls.append(torch.is_grad_enabled())
        return real_step(sampler, *args, **kwargs)

    real_step = Sampler.step
    with mock.patch.object(Sampler, "step", step):
        shortcut = plan_step(module, optimizer, batch, precision)
    assert shortcut.peak.by_role == every.peak.by_role
    assert shortcut.flops == every.flops
    # 4 steps: two no-grad steps traced (of 4 for DRaFT-LV, 3 for DRaFT-1), the window's one run
    assert calls == [False, False, True]


def test_compile_unet_is_planned_as_its_eager_calls():
    """The shipped GPU configs set compile_unet: the plan counts every call's eager ops
    (command.build drops the compiled graph on the meta device) and plans the same step."""
    args = [*TINY, *FEW_STEPS, *ESTIMATORS["draft_full"], "--model.compile_unet", "true"]
    module, batch, precision = build(args, _cli_class())
    assert module.sampler.compiled is None
    plan = plan_step(module, make_optimizer(module), batch, precision)
    eager = planned("draft_full")[-1]
    assert plan.peak.by_role == eager.peak.by_role and plan.flops == eager.flops


def test_more_differentiated_steps_plan_more_memory_and_flops():
    one, full = planned("draft_1")[-1], planned("draft_full")[-1]
    assert full.peak_bytes > one.peak_bytes
    assert full.flops > one.flops


def test_largest_batch_is_the_largest_that_fits():
    module, optimizer, _, precision, _ = planned("draft_lv")
    one, four = (plan_step(module, optimizer, b, precision) for b in (1, 4))
    memory = (one.peak_bytes + four.peak_bytes) // 2
    plans = [one, four]
    fit = largest_batch(module, optimizer, plans, memory, precision)
    assert 1 <= fit.largest_batch < 4
    assert len(plans) <= 4  # the affine fit's candidate and the one above it, no bisection
    assert largest_batch(module, optimizer, plans, memory, precision).largest_batch == (
        fit.largest_batch
    )
    assert len(plans) <= 4  # a second memory size reuses the plans already made
    assert fit.plan.peak_bytes <= memory
    assert plan_step(module, optimizer, fit.largest_batch + 1, precision).peak_bytes > memory
    assert largest_batch(module, optimizer, [one, four], one.peak_bytes - 1).largest_batch == 0


@pytest.mark.parametrize(
    ("text", "size"),
    [("24GiB", 24 * 2**30), ("80GB", 80 * 10**9), ("1.5 TiB", int(1.5 * 2**40)), ("512mib", 2**29)],
)
def test_memory_sizes(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["24", "24XB", "", "GiB", "-1GiB", "0GiB"])
def test_bad_memory_sizes_are_refused(text):
    with pytest.raises(ConfigError, match="--memory"):
        parse_memory(text)


def test_tracker_counts_each_storage_once_and_frees_it():
    from draft_lightning.planning.tracker import LiveMemory

    memory = LiveMemory()
    with memory:
        a = torch.ones(1024, 256, device="meta")  # 1 MiB
        view = a[:10]  # same storage
        b = a * 2
        del a, view
        c = b + 1
        del b, c
    assert memory.peak.bytes == 2 * 2**20
    assert sum(memory.totals.values()) == 0


def test_tracker_tells_saved_activations_from_transient_ones():
    from draft_lightning.planning.tracker import LiveMemory

    weight = torch.nn.Parameter(torch.ones(256, 256, device="meta"))
    memory = LiveMemory()
    memory.add_module(torch.nn.ParameterList([weight]))
    with memory:
        x = torch.ones(1024, 256, device="meta")
        product = x @ weight  # saves x for the weight's gradient
        hidden = torch.tanh(product)  # saves its output; the product itself is not kept
        del x, product
        loss = hidden.sum()
    assert memory.totals["trainable"] == 256 * 256 * 4
    assert memory.totals["saved"] == 2 * 1024 * 256 * 4
    assert memory.totals["transient"] == 4  # the loss
    del hidden, loss
