"""`lightning plan` against reality, and the paper-scale table it produces (issue 22).

Check: for each estimator, the peak memory `lightning plan` predicts (meta device, no weights)
against the peak of the same step run for real on this CPU, read from the CPU allocator's
records by torch.profiler (planning/measure.py: independent of the plan's own op-by-op
accounting). On the tiny model (its real loading path) and on SD 1.4's real-size architecture
with random weights at 128 px, float32, batch 1.

Paper scale: the plan of configs/draft_lv.yaml's setting (and the SDXL/SD3.5/FLUX configs) at
full resolution for each estimator; the largest batch that fits 24/48/80 GB solves the peak's
affine dependence on the batch from the plans at batch 1 and 2.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.bench_plan [--smoke] [--part check|paper]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.common import Section, commit, table
from draft_lightning.cli import _cli_class
from draft_lightning.planning.command import build
from draft_lightning.planning.measure import measured_peak, resident_bytes
from draft_lightning.planning.plan import GIB, make_optimizer, plan_step, training_step

MiB = 2**20
TINY = ["--config", "configs/draft_lv.yaml", "--config", "configs/cpu_tiny.yaml"]
REAL_SIZE_SD14 = [
    "--config",
    "configs/draft_lv.yaml",
    "--trainer.precision=32-true",
    "--model.frozen_dtype=float32",
    "--model.reward.dtype=float32",
    "--model.sampling.resolution=128",
    "--model.sampling.num_steps=10",
    "--data.batch_size=1",
]


def estimator_args(name: str) -> list[str]:
    estimators = {
        "DRaFT-LV n=2": [],
        "DRaFT-1": ["--model.estimator", "draft_lightning.estimators.DraftK"],
        "DRaFT-K K=3": [
            "--model.estimator",
            "draft_lightning.estimators.DraftK",
            "--model.estimator.k",
            "3",
        ],
        "DRaFT-K K=5": [
            "--model.estimator",
            "draft_lightning.estimators.DraftK",
            "--model.estimator.k",
            "5",
        ],
        "DRaFT-K K=10": [
            "--model.estimator",
            "draft_lightning.estimators.DraftK",
            "--model.estimator.k",
            "10",
        ],
        "full DRaFT": ["--model.estimator", "draft_lightning.estimators.Draft"],
        "AlignProp (random truncation)": [
            "--model.estimator",
            "draft_lightning.estimators.RandomTruncation",
        ],
        "ReFL": ["--model.estimator", "draft_lightning.estimators.ReFL"],
        "Direct-Align": ["--model.estimator", "draft_lightning.estimators.DirectAlign"],
    }
    return estimators[name]


def check(args: list[str], real_device: str | None) -> tuple[int, int, dict]:
    """(planned peak, measured peak, planned roles) of one step of the config `args`."""
    module, batch, precision = build(args, _cli_class())
    plan = plan_step(module, make_optimizer(module), batch, precision)
    del module
    if real_device is None:  # the tiny model's own loading path, with its weights
        real, _, _ = _real(args, _cli_class)
    else:  # the same architecture, randomly initialised
        real, _, _ = build(args, _cli_class(), device=real_device)
    optimizer = make_optimizer(real)
    torch.manual_seed(0)
    measured = measured_peak(
        lambda: training_step(real, optimizer, batch, precision),
        resident_bytes(real, optimizer),
    )
    return plan.peak_bytes, measured, plan.peak.by_role


def _real(args, cli_class):
    from draft_lightning.planning.command import parse_fit

    cli = parse_fit(args, cli_class())
    return cli.model, cli.datamodule.batch_size, None


def run_check(smoke: bool = False) -> Section:
    tiny = [
        "DRaFT-1",
        "DRaFT-LV n=2",
        "DRaFT-K K=3",
        "full DRaFT",
        "AlignProp (random truncation)",
        "ReFL",
    ]
    real = [] if smoke else ["DRaFT-1", "DRaFT-LV n=2", "DRaFT-K K=5"]
    tiny = tiny[:2] if smoke else tiny
    rows, data = [], {}
    for where, names, base, device in (
        ("tiny SD, 32 px, batch 2, 10 steps", tiny, TINY, None),
        (
            "SD 1.4 real size, random weights, 128 px, batch 1, 10 steps, fp32",
            real,
            REAL_SIZE_SD14,
            "cpu",
        ),
    ):
        for name in names:
            planned, measured, roles = check([*base, *estimator_args(name)], device)
            error = planned / measured - 1
            data[f"{where} / {name}"] = {"planned": planned, "measured": measured, "roles": roles}
            print(
                f"[plan check] {where} / {name}: {planned} planned, {measured} measured",
                file=sys.stderr,
                flush=True,
            )
            rows.append(
                [
                    where,
                    name,
                    f"{planned / MiB:.1f}",
                    f"{measured / MiB:.1f}",
                    f"{error:+.1%}",
                    " / ".join(
                        f"{roles[r] / MiB:.1f}"
                        for r in ("frozen", "trainable", "saved", "transient")
                    ),
                ]
            )
    body = table(
        [
            "model",
            "estimator",
            "planned peak MiB",
            "measured peak MiB",
            "error",
            "planned: frozen / trainable+optimiser / saved / transient MiB",
        ],
        rows,
    )
    body += (
        "\n\nPlanned: `lightning plan`'s step on the meta device, no weights. Measured: the same"
        " config's step run for real on this CPU (DraftModule.training_step, backward, AdamW"
        " step, optimiser state created beforehand as from the second step on), its peak = the"
        " weights, buffers and optimiser state resident before the step + the highest running"
        " sum of the blocks the CPU allocator allocated during it and their frees, matched by"
        " address (torch.profiler, profile_memory=True), which does not use the plan's"
        " accounting."
    )
    return Section("9. lightning plan against a measured step (CPU)", "", body, data)


PAPER = [
    (
        "SD 1.4, 512 px",
        ["--config", "configs/draft_lv.yaml"],
        ["DRaFT-1", "DRaFT-LV n=2", "DRaFT-K K=10", "full DRaFT"],
    ),
    (
        "SDXL, 1024 px",
        ["--config", "configs/sdxl_draft_lv.yaml"],
        ["DRaFT-1", "DRaFT-LV n=2", "DRaFT-K K=10", "full DRaFT"],
    ),
    (
        "SD3.5-M, 1024 px",
        ["--config", "configs/sd35_draft_lv.yaml", "--model.sampling.resolution=1024"],
        ["DRaFT-1", "DRaFT-LV n=2", "DRaFT-K K=10", "full DRaFT"],
    ),
    (
        "FLUX.1-dev, 1024 px",
        ["--config", "configs/flux_draft_lv.yaml", "--model.sampling.resolution=1024"],
        ["DRaFT-1", "DRaFT-LV n=2", "DRaFT-K K=10", "full DRaFT", "Direct-Align"],
    ),
]


def run_paper(smoke: bool = False, models: list[str] | None = None) -> Section:
    rows, data = [], {}
    for model, base, names in PAPER[:1] if smoke else PAPER:
        if models and not any(m in model for m in models):
            continue
        for name in names[:1] if smoke else names:
            args = [*base, *estimator_args(name)]
            if smoke:
                args += ["--model.sampling.num_steps=3", "--model.sampling.resolution=128"]
            start = time.perf_counter()
            module, batch, precision = build(args, _cli_class())
            optimizer = make_optimizer(module)
            plans = {b: plan_step(module, optimizer, b, precision) for b in (1, 2)}
            slope = plans[2].peak_bytes - plans[1].peak_bytes
            fixed = plans[1].peak_bytes - slope
            at_batch = (
                plans[batch] if batch in plans else plan_step(module, optimizer, batch, precision)
            )
            largest = {gb: max(0, int((gb * 1e9 - fixed) // max(slope, 1))) for gb in (24, 48, 80)}
            seconds = time.perf_counter() - start
            data[f"{model} / {name}"] = {
                "batch": batch,
                "peak": at_batch.peak_bytes,
                "roles": at_batch.peak.by_role,
                "flops": at_batch.flops,
                "largest": largest,
                "seconds": seconds,
            }
            rows.append(
                [
                    model,
                    name,
                    batch,
                    f"{at_batch.peak_bytes / GIB:.1f}",
                    " / ".join(
                        "yes" if at_batch.peak_bytes <= gb * 1e9 else "no" for gb in (24, 48, 80)
                    ),
                    " / ".join(str(largest[gb]) for gb in (24, 48, 80)),
                    f"{at_batch.flops / 1e12:.0f}",
                    f"{seconds:.0f}",
                ]
            )
            # Each row as it is done (a full-DRaFT plan at 1024 px takes minutes).
            print(
                "| " + " | ".join(str(cell) for cell in rows[-1]) + " |",
                file=sys.stderr,
                flush=True,
            )
            del module, optimizer
    body = table(
        [
            "model",
            "estimator",
            "config batch",
            "peak GiB",
            "fits 24 / 48 / 80 GB",
            "largest batch 24 / 48 / 80 GB",
            "TFLOP / step",
            "plan s",
        ],
        rows,
    )
    body += (
        "\n\nEach row is `lightning plan --config <config> --model.estimator ...` (the shipped"
        " config's sampling steps, guidance, LoRA, checkpointing and bf16-mixed precision);"
        " largest batch = the affine fit of the plans at batch 1 and 2 (`lightning plan"
        " --memory` verifies the fit's candidate and the batch above it with plans of their"
        " own). Not included: CUDA context and allocator"
        " fragmentation."
    )
    return Section("10. Paper scale from `lightning plan`", "", body, data)


def run(smoke: bool = False) -> Section:
    check_section = run_check(smoke)
    paper = run_paper(smoke)
    measured = commit()
    body = f"Commit measured: {measured}.\n\n" + check_section.body + "\n\n" + paper.body
    return Section(
        "9. lightning plan: checked against measured steps, and at paper scale",
        "",
        body,
        {"check": check_section.data, "paper": paper.data, "commit": measured},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--part", choices=["check", "paper", "all"], default="all")
    parser.add_argument("--models", nargs="*", help="paper part: model names to include")
    args = parser.parse_args()
    if args.part == "check":
        print(run_check(args.smoke).body)
    elif args.part == "paper":
        print(run_paper(args.smoke, args.models).body)
    else:
        print(run(args.smoke).body)


if __name__ == "__main__":
    main()
