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
    from benchmarks.bench_gpu import run

    section = run(smoke=True, steps=1)
    row = next(line for line in section.body.splitlines() if "tiny SD (smoke)" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    seconds, planned, measured = float(cells[3]), float(cells[4]), cells[5]
    assert seconds > 0 and planned > 0 and measured == "-"  # no CUDA allocator on the CPU


def test_gpu_section_says_no_gpu_measured_it_without_one(monkeypatch):
    from benchmarks import bench_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench_gpu, "measure", lambda *a, **k: pytest.fail("measured"))
    section = bench_gpu.run()
    assert section.body == bench_gpu.NOT_RUN and section.data == {"device": None}


def test_run_all_keeps_each_finished_table_when_a_later_one_fails(tmp_path, monkeypatch):
    """A killed or failed `make bench` keeps what it measured; `--only` the rest completes
    the page, in the page's order, each table with its commit and its hand-written notes."""
    import sys

    from benchmarks import run_all
    from benchmarks.common import Section, commit

    def paper(smoke: bool) -> Section:
        return Section("6. Paper", "", "| paper table |", {})

    def gpu(smoke: bool) -> Section:
        raise RuntimeError("killed")

    fake = {"paper": ("bench_paper_scale", paper), "gpu": ("bench_gpu", gpu)}
    monkeypatch.setattr(run_all, "benchmarks", lambda: fake)
    monkeypatch.setattr(run_all, "LAST_RUN", tmp_path / "last_run.json")
    monkeypatch.setattr(run_all, "wait_until_quiet", lambda seconds: "quiet")
    monkeypatch.setattr(run_all, "ROOT", tmp_path)  # where benchmarks/notes_<table>.md live
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "notes_gpu.md").write_text("Written by hand.")
    out = tmp_path / "benchmarks.md"
    monkeypatch.setattr(sys, "argv", ["run_all", "--out", str(out)])
    with pytest.raises(RuntimeError, match="killed"):
        run_all.main()
    saved, _, _ = run_all.load_run()
    assert list(saved) == ["paper"] and saved["paper"].data["_commit"] == commit()
    assert not out.exists()

    fake["gpu"] = ("bench_gpu", lambda smoke: Section("8. GPU", "", "| gpu table |", {}))
    monkeypatch.setattr(sys, "argv", ["run_all", "--only", "gpu", "--out", str(out)])
    run_all.main()
    page = out.read_text()
    assert page.index("## 6. Paper") < page.index("## 8. GPU") < page.index("Written by hand.")
    assert page.count(f"commit {commit()})") == 2 and "| paper table |" in page


def test_bench_gpu_on_a_fresh_checkout_replaces_only_its_section_and_the_commit_list():
    """`make bench-gpu` on a GPU machine has no saved run: it splices section 8 into the
    committed page, and the header's commit list follows the tables' command lines."""
    from benchmarks import run_all
    from benchmarks.common import ROOT, Section

    page = (ROOT / "docs" / "benchmarks.md").read_text()
    data = {"_commit": "abcdef1", "_date": "2027-01-01 00:00 UTC", "_seconds": 300.0}
    section = Section("8. GPU: real size, bf16 (`make bench-gpu`)", "", "| H100 row |", data)
    spliced = run_all.splice(page, {"gpu": section})
    header = next(line for line in spliced.splitlines() if line.startswith("Commit measured:"))
    assert "abcdef1" in header
    assert "| H100 row |" in spliced and "No GPU was lent" not in spliced
    before, after = page.split("\n## "), spliced.split("\n## ")
    assert len(before) == len(after)
    changed = [old[:12] for old, new in zip(before, after, strict=True) if old != new]
    assert changed == [before[0][:12], "8. GPU: real"]  # the header and section 8 only


def test_make_bench_without_a_gpu_keeps_the_gpu_figures_already_in_the_page(tmp_path, monkeypatch):
    import sys

    from benchmarks import bench_gpu, run_all
    from benchmarks.common import Section

    measured = Section(
        bench_gpu.TITLE,
        "make bench-gpu",
        "Device: NVIDIA H100 80GB HBM3. Median of 3 steps.\n\n| SD 1.4 | DRaFT-1 | 1 | 0.61 |",
        {"device": "NVIDIA H100", "_seconds": 412.0, "_date": "2027-01-01 09:00 UTC"},
    )
    measured.data["_commit"] = "abcdef1"
    out = tmp_path / "benchmarks.md"
    out.write_text(run_all.render({"gpu": measured}, {}, ("", "")))

    def not_run(smoke: bool) -> Section:  # what bench_gpu.run gives without a GPU
        return Section(bench_gpu.TITLE, "", bench_gpu.NOT_RUN, {"device": None})

    monkeypatch.setattr(run_all, "benchmarks", lambda: {"gpu": ("bench_gpu", not_run)})
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    monkeypatch.setattr(run_all, "LAST_RUN", tmp_path / "last_run.json")
    monkeypatch.setattr(run_all, "wait_until_quiet", lambda seconds: "quiet")
    monkeypatch.setattr(sys, "argv", ["run_all", "--out", str(out)])
    run_all.main()
    page = out.read_text()
    assert "NVIDIA H100 80GB HBM3" in page and "No GPU was lent" not in page
    assert "(412 s, 2027-01-01 09:00 UTC, commit abcdef1)" in page
    assert page.count("Device: NVIDIA") == 1
