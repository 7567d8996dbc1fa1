"""`make bench-gpu`: real-size SD 1.4 (512 px) and SDXL (1024 px) with random weights on one
GPU, DRaFT-1 and DRaFT-LV, bf16-mixed: seconds per step and torch.cuda.max_memory_allocated
against `lightning plan`'s prediction for the same config. Random weights: the architectures
come from the shipped config files (planning/architectures), so nothing is downloaded.

    .venv/bin/python -m benchmarks.run_all --only gpu   # `make bench-gpu`: the page's section 8
    .venv/bin/python -m benchmarks.bench_gpu            # print the table only (GPU machine)
    .venv/bin/python -m benchmarks.bench_gpu --smoke    # the same code on the CPU, tiny model
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.bench_plan import TINY, estimator_args
from benchmarks.common import Section, table
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


TITLE = "8. GPU: real size, bf16 (`make bench-gpu`)"
NOT_RUN = (
    "No GPU was lent for this run (the machine that generated this section has none), so"
    " nothing here was measured on one:"
    " `make bench-gpu` (real-size random-weight SD 1.4 at 512 px and SDXL at 1024 px,"
    " DRaFT-1 and DRaFT-LV n=2, bf16-mixed, batch 1: seconds per step and"
    " `torch.cuda.max_memory_allocated` against `lightning plan`'s prediction) rewrites it"
    " when run on one. Its measuring code runs on the CPU with the tiny model in"
    " tests/test_benchmarks_smoke.py."
)


def rows(device: str, steps: int, cases) -> list[list[str]]:
    out = []
    for model, base in cases:
        for estimator in ESTIMATORS:
            result = measure([*base, *estimator_args(estimator)], device, steps)
            measured = result["measured"]
            cells = (
                (f"{measured / GIB:.2f}", f"{result['planned'] / measured - 1:+.1%}")
                if measured
                else ("-", "-")
            )
            out.append(
                [
                    model,
                    estimator,
                    str(result["batch"]),
                    f"{result['seconds']:.2f}",
                    f"{result['planned'] / GIB:.2f}",
                    *cells,
                ]
            )
            print(" | ".join(out[-1]), file=sys.stderr, flush=True)
    return out


def run(smoke: bool = False, steps: int = 3) -> Section:
    """The GPU table on a CUDA machine; the tiny model on the CPU with `smoke`; otherwise
    the section says that no GPU measured it."""
    if not smoke and not torch.cuda.is_available():
        return Section(TITLE, "", NOT_RUN, {"device": None})
    device = "cpu" if smoke else "cuda"
    cases = [("tiny SD (smoke)", TINY)] if smoke else CASES
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke)"
    header = [
        "model",
        "estimator",
        "batch",
        "s / step",
        "planned GiB",
        "max_memory_allocated GiB",
        "planned / measured - 1",
    ]
    body = (
        f"Device: {name}. Median of {steps} steps after one warm-up step; planned = "
        "`lightning plan` for the same arguments (meta device, no weights); measured = "
        "`torch.cuda.max_memory_allocated` over the timed steps (weights, optimiser state and "
        "the step's peak; no CUDA context, no allocator cache).\n\n"
        + table(header, rows(device, steps, cases))
    )
    return Section(TITLE, "", body, {"device": name})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(run(args.smoke, args.steps).body)


if __name__ == "__main__":
    main()
