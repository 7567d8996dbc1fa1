"""`make bench-gpu`: real-size SD 1.4 (512 px) and SDXL (1024 px) with random weights on one
GPU, DRaFT-1 and DRaFT-LV, bf16-mixed: seconds per step and torch.cuda.max_memory_allocated
against `lightning plan`'s prediction for the same config. Random weights: the architectures
come from the shipped config files (planning/architectures), so nothing is downloaded.

    .venv/bin/python -m benchmarks.bench_gpu            # on a GPU machine, under 10 minutes
    .venv/bin/python -m benchmarks.bench_gpu --smoke    # the same code on the CPU, tiny model
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.bench_plan import TINY, estimator_args
from draft_lightning.cli import _cli_class
from draft_lightning.planning.command import build
from draft_lightning.planning.plan import GIB, make_optimizer, plan_step, training_step

CASES = [
    ("SD 1.4, 512 px", ["--config", "configs/draft_lv.yaml", "--data.batch_size=1"]),
    ("SDXL, 1024 px", ["--config", "configs/sdxl_draft_lv.yaml", "--data.batch_size=1"]),
]
ESTIMATORS = ["DRaFT-1", "DRaFT-LV n=2"]


def measure(args: list[str], device: str, steps: int) -> dict:
    """Plan the config, then run it for real with random weights on `device`."""
    planned_module, batch, precision = build(args, _cli_class())
    plan = plan_step(planned_module, make_optimizer(planned_module), batch, precision)
    del planned_module
    module, _, _ = build(args, _cli_class(), device=device)
    optimizer = make_optimizer(module)
    cuda = device.startswith("cuda")
    training_step(module, optimizer, batch, precision)  # warm-up (kernels, allocator)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        training_step(module, optimizer, batch, precision)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    del module, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return {
        "batch": batch,
        "planned": plan.peak_bytes,
        "measured": peak,
        "seconds": sorted(seconds)[len(seconds) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    cases = [("tiny SD (smoke)", TINY)] if args.smoke else CASES
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}")
    print(
        "| model | estimator | batch | s / step | planned GiB | max_memory_allocated GiB | error |"
    )
    print("|---|---|---|---|---|---|---|")
    for model, base in cases:
        for estimator in ESTIMATORS:
            result = measure([*base, *estimator_args(estimator)], device, args.steps)
            measured = result["measured"]
            cells = (
                (f"{measured / GIB:.2f}", f"{result['planned'] / measured - 1:+.1%}")
                if measured
                else ("-", "-")
            )
            print(
                f"| {model} | {estimator} | {result['batch']} | {result['seconds']:.2f} | "
                f"{result['planned'] / GIB:.2f} | {cells[0]} | {cells[1]} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
