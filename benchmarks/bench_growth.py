"""How the cost of a DRaFT-1 training step grows with the number of sampling steps, the batch
size and the resolution (issue 8, table 3).

Why: a step should cost in proportion to the UNet work it does (linear in steps and batch,
linear-to-quadratic in pixels because of attention); anything steeper is overhead to find.
Each sweep alternates its variants in one process and reports time relative to the sweep's
first variant, next to the proportional ("ideal") ratio.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.bench_growth [--smoke]
"""

from __future__ import annotations

import argparse
import functools

import torch

from benchmarks.common import Section, alternate, build_module, fmt_ratio, ratio, table, train_step


def sweep(variants: dict[str, tuple], rounds: int) -> dict:
    """variants: name -> (resolution, steps, batch). Builds one module per shape."""
    modules: dict[tuple[int, int], object] = {}
    fns = {}
    for name, (resolution, steps, batch) in variants.items():
        key = (resolution, steps)
        if key not in modules:
            modules[key] = build_module(resolution, steps)
        module = modules[key]
        optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-9)
        fns[name] = functools.partial(train_step, module, optimizer, batch)
    times = alternate(fns, rounds, warmup=1)
    first = next(iter(variants))
    return {name: {"ratio": ratio(times, name, first), "times": times[name]} for name in variants}


def run(smoke: bool = False) -> Section:
    if smoke:
        sweeps = {"sampling steps": {"2": (32, 2, 1), "4": (32, 4, 1)}}
        rounds = 1
    else:
        sweeps = {
            "sampling steps (64 px, batch 2)": {
                "10": (64, 10, 2),
                "25": (64, 25, 2),
                "50": (64, 50, 2),
            },
            "batch size (64 px, 10 steps)": {"1": (64, 10, 1), "2": (64, 10, 2), "4": (64, 10, 4)},
            "resolution (batch 2, 10 steps)": {
                "32 px": (32, 10, 2),
                "64 px": (64, 10, 2),
                "96 px": (96, 10, 2),
            },
        }
        rounds = 2
    results = {title: sweep(variants, rounds) for title, variants in sweeps.items()}
    rows = []
    for title, variants in sweeps.items():
        first = next(iter(variants.values()))
        for name, (resolution, steps, batch) in variants.items():
            if title.startswith("sampling steps"):
                ideal = steps / first[1]
            elif title.startswith("batch"):
                ideal = batch / first[2]
            else:
                ideal = (resolution / first[0]) ** 2
            r = results[title][name]
            rows.append(
                [title, name, fmt_ratio(r["ratio"]), f"{ideal:.2f}", f"{min(r['times']):.2f}"]
            )
    body = table(
        ["sweep", "value", "time / first (median, min-max)", "proportional", "s (best)"], rows
    )
    body += (
        f"\n\nDRaFT-1 training steps (training_step + backward + clip + AdamW), {rounds} rounds"
        " after one warm-up, variants alternating within each sweep; guidance 7.5, LoRA rank 8,"
        " brightness reward. `proportional` is linear in steps and batch and in pixel count"
        " for resolution (attention over latent tokens is quadratic in pixel count, so"
        " resolution may grow faster than that)."
    )
    return Section("3. Cost growth", "", body, {"results": results})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny sweep, one round")
    print(run(parser.parse_args().smoke).body)


if __name__ == "__main__":
    main()
