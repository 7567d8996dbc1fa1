"""Every benchmark once at its smallest size, so they do not rot (`make bench` runs them at
full size and rewrites docs/benchmarks.md); plus the two opt-in options they measure keep
the results they promise."""

from __future__ import annotations

import pytest
import torch

LOCAL = ("parts", "memory", "growth", "sampler", "speedups", "paper", "plan")


@pytest.fixture(scope="module")
def sections(tiny_sd):
    from benchmarks import run_all

    return {name: run_all.benchmarks()[name][1](True) for name in LOCAL}


@pytest.mark.parametrize("name", LOCAL)
def test_benchmark_produces_a_table(sections, name):
    assert "| " in sections[name].body


def test_prompt_stream_benchmark_runs():
    from benchmarks import run_all

    section = run_all.prompt_stream(smoke=True)
    assert "lines" in section.body and "failed" not in section.body


def test_trl_peer_runs_when_its_venv_exists(tiny_sd):
    from benchmarks import bench_trl

    if not bench_trl.STAMP.exists():
        pytest.skip("benchmarks/.venv-trl is created by `make bench` (needs PyPI)")
    section = bench_trl.run(smoke=True, install=False)
    assert "error" not in section.data, section.body
    assert set(section.data["ratios"]) == {"1", "2"}


def test_the_doc_has_every_section_and_the_targets(sections, tmp_path):
    from benchmarks import run_all
    from benchmarks.common import machine, write_atomic

    text = run_all.render(sections, machine(), ("quiet", "quiet"))
    out = tmp_path / "benchmarks.md"
    write_atomic(out, text)
    written = out.read_text()
    assert "## Targets" in written and "sum of its parts" in written
    assert written.count("Command: `") == len(LOCAL)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def lora_gradients(**options) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
    from benchmarks.common import build_module, prompts
    from draft_lightning.estimators import DraftK

    torch.manual_seed(0)  # the LoRA's random init
    module = build_module(32, 4, estimator=DraftK(2), guidance_scale=3.0, **options)
    with torch.no_grad():  # a non-identity adapter, so merging it changes the weights
        generator = torch.Generator().manual_seed(0)
        for p in module.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    before = {n: p.detach().clone() for n, p in module.pipeline.denoiser.named_parameters()}
    loss = module.training_step({"prompts": prompts(2)}, 0)
    loss.backward()
    after = {n: p.detach() for n, p in module.pipeline.denoiser.named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in before)  # restored exactly
    return loss.detach(), [p.grad for p in module.trainable_parameters()], module


@pytest.mark.parametrize(
    "option", ["merge_lora_without_grad", "checkpoint_blocks", "channels_last"]
)
def test_speed_and_memory_options_keep_loss_and_gradients(tiny_sd, option):
    loss, grads, _ = lora_gradients(merge_lora_without_grad=False)  # the plain computation
    loss_o, grads_o, module = lora_gradients(**{option: True})
    torch.testing.assert_close(loss_o, loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_o, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
    images = module.generate(["a cat"], [0])
    assert images.shape == (1, 3, 32, 32)


def test_gpu_benchmark_code_path_runs_on_the_cpu(tiny_sd):
    """`make bench-gpu` cannot run here; its measuring code runs on the tiny model instead."""
    from benchmarks.bench_gpu import measure
    from benchmarks.bench_plan import TINY

    result = measure(TINY, "cpu", steps=1)
    assert result["planned"] > 0 and result["seconds"] > 0 and result["measured"] is None
