"""Memory against the number of differentiated steps K, with and without gradient
checkpointing, and for DRaFT-LV (issue 8, table 2). Each measurement runs in its own process.

Why: DRaFT-K's promise is memory that does not grow with the sampling steps outside the
window, and (with checkpointing) barely with K itself. Three measures per configuration:
activation bytes (distinct storages autograd saved that are still alive when backward starts:
what a step must hold), the peak of tensor bytes allocated during one full step (forward,
backward with recompute, optimiser) plus the model's own bytes (the CPU analogue of a GPU's
max_memory_allocated), and the process's peak RSS (context only: glibc keeps freed memory).

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.bench_memory [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import ROOT, Section, mib, table

KS = (1, 5, 10, 25, 50)
LV_NS = (1, 2, 4)


def configurations(smoke: bool) -> list[dict]:
    if smoke:
        return [{"kind": "k", "k": 1, "ckpt": True, "steps": 2, "resolution": 32, "batch": 1}]
    size = {"steps": 50, "resolution": 64, "batch": 2}
    configs = [{"kind": "k", "k": k, "ckpt": ckpt, **size} for ckpt in (True, False) for k in KS]
    configs += [{"kind": "k", "k": k, "ckpt": True, "blocks": True, **size} for k in (1, 50)]
    configs += [{"kind": "lv", "n": n, "ckpt": True, **size} for n in LV_NS]
    return configs


def measure_one(config: dict) -> dict:
    """One training step of one configuration, in this (fresh) process."""
    import torch

    from benchmarks.common import (
        SavedTensors,
        build_module,
        module_bytes,
        peak_allocated,
        peak_rss_bytes,
        prompts,
    )
    from draft_lightning.estimators import DraftK, DraftLV

    estimator = DraftK(config["k"]) if config["kind"] == "k" else DraftLV(n=config["n"])
    module = build_module(
        config["resolution"],
        config["steps"],
        estimator=estimator,
        gradient_checkpointing=config["ckpt"],
        checkpoint_decode=config["ckpt"],
        checkpoint_blocks=config.get("blocks", False),
    )
    optimizer = torch.optim.AdamW(module.trainable_parameters())
    saved = SavedTensors()

    def step() -> int:
        with saved.recording():
            loss = module.training_step({"prompts": prompts(config["batch"])}, 0)
        live = saved.live()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return live

    live, peak = peak_allocated(step)
    weights = module_bytes(module)
    return {
        **config,
        "activation_bytes": live,
        "saved_total_bytes": saved.total,
        "peak_step_bytes": peak,
        "model_bytes": weights,
        "peak_bytes": peak + weights,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def spawn(config: dict) -> dict:
    """Run measure_one in a fresh interpreter so no allocation of another run is counted."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", "--one", json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory worker {config} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


ORDER = ("calls", "calls + blocks", "off")


def mode(config: dict) -> str:
    """How the configuration checkpoints: off, per UNet call, or also block by block."""
    if not config["ckpt"]:
        return "off"
    return "calls + blocks" if config.get("blocks") else "calls"


def heavy(config: dict) -> bool:
    """Runs that hold gigabytes (no checkpointing, large K) go one at a time."""
    return not config["ckpt"] and config.get("k", 0) >= 25


def run(smoke: bool = False, workers: int = 2) -> Section:
    configs = configurations(smoke)
    # Memory is counted in bytes, so workers may share the CPU without skewing it; the two
    # multi-GB runs go first and last so they never run at the same time.
    big = [c for c in configs if heavy(c)]
    order = big[:1] + [c for c in configs if not heavy(c)] + big[1:]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(spawn, order))
    results.sort(key=lambda r: (r["kind"], ORDER.index(mode(r)), r.get("k", 0), r.get("n", 0)))
    k_rows = [r for r in results if r["kind"] == "k"]
    base = {mode(r): r for r in k_rows if r["k"] == 1}
    rows = []
    for r in k_rows:
        b = base[mode(r)]
        rows.append(
            [
                r["k"],
                mode(r),
                mib(r["activation_bytes"]),
                mib(r["peak_bytes"]),
                f"{r['peak_bytes'] / b['peak_bytes']:.2f}",
                f"{r['activation_bytes'] / b['activation_bytes']:.2f}",
                mib(r["peak_rss_bytes"]),
            ]
        )
    body = "DRaFT-K:\n\n" + table(
        [
            "K",
            "checkpointing",
            "activations MiB",
            "peak MiB",
            "peak / K=1",
            "activations / K=1",
            "peak RSS MiB",
        ],
        rows,
    )
    lv = [r for r in results if r["kind"] == "lv"]
    if lv:
        lv_rows = [
            [
                r["n"],
                mode(r),
                mib(r["activation_bytes"]),
                mib(r["peak_bytes"]),
                f"{r['peak_bytes'] / base[mode(r)]['peak_bytes']:.2f}",
                mib(r["peak_rss_bytes"]),
            ]
            for r in lv
        ]
        body += "\n\nDRaFT-LV:\n\n" + table(
            ["n", "checkpointing", "activations MiB", "peak MiB", "peak / DRaFT-1", "peak RSS MiB"],
            lv_rows,
        )
    first = results[0]
    body += (
        "\n\nCheckpointing `calls` = the default (gradient_checkpointing and checkpoint_decode:"
        " each differentiated UNet call and the decode keep only their inputs); `calls +"
        " blocks` = also `checkpoint_blocks=True` (diffusers' per-block checkpointing inside"
        " the UNet and the VAE decoder); `off` = neither."
    )
    body += (
        f"\n\nShapes: {first['resolution']} px, batch {first['batch']}, {first['steps']} DDIM"
        " steps, guidance 7.5, LoRA rank 8; one training step (forward, backward, clip, AdamW)"
        " per process (single-threaded, two at a time). `activations` = distinct storages"
        " saved by autograd and alive when"
        " backward starts (saved_tensors_hooks); `peak` = the model's parameter and buffer"
        f" bytes ({mib(first['model_bytes'])} MiB) + the peak of tensor bytes allocated during"
        " the step (torch.profiler memory events: includes the recompute of checkpointed calls,"
        " gradients and AdamW state); `peak RSS` = the process's maximum resident set,"
        " imports and all, for context only."
    )
    return Section("2. Memory against K", "", body, {"rows": results})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one configuration, tiny sizes")
    parser.add_argument("--one", help="internal: measure this JSON configuration and print it")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))), flush=True)
        return
    print(run(args.smoke).body)


if __name__ == "__main__":
    main()
