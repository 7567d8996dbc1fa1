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


def serve(configs: list[dict], workers: int) -> list[dict]:
    """Measure each configuration in its own process, forked from this one after the heavy
    imports (torch, diffusers, lightning) but before any torch op has run: each child is a
    fresh process for memory purposes without paying ~5 s of imports again."""
    import multiprocessing

    import benchmarks.common  # noqa: F401 - the imports every child needs
    import draft_lightning.module  # noqa: F401

    context = multiprocessing.get_context("fork")
    with context.Pool(workers, maxtasksperchild=1) as pool:
        return pool.map(measure_one, configs, chunksize=1)


def spawn_server(configs: list[dict], workers: int) -> list[dict]:
    """Run `serve` in a fresh single-threaded interpreter, so no earlier benchmark's threads
    or allocations are inherited by the measured processes."""
    out = subprocess.run(
        [
            sys.executable,
            *("-m", "benchmarks.bench_memory", "--workers", str(workers)),
            *("--serve", json.dumps(configs)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory server failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


ORDER = ("calls", "calls + blocks", "off")


def mode(config: dict) -> str:
    """How the configuration checkpoints: off, per UNet call, or also block by block."""
    if not config["ckpt"]:
        return "off"
    return "calls + blocks" if config.get("blocks") else "calls"


def cost(config: dict) -> float:
    """Rough relative run time, in no-grad UNet calls: differentiated calls cost a forward,
    a backward and (checkpointed) a recompute; blocks add another forward."""
    window = config.get("k", 1) if config["kind"] == "k" else config.get("n", 1)
    per_call = 2 + config["ckpt"] + config.get("blocks", False)
    prefix = config["steps"] - (window if config["kind"] == "k" else 0)
    return prefix + window * per_call


def run(smoke: bool = False, workers: int = 2) -> Section:
    # Memory is counted in bytes, so workers may share the CPU without skewing it; the
    # longest runs start first so that no long one is left running alone at the end.
    order = sorted(configurations(smoke), key=cost, reverse=True)
    results = spawn_server(order, workers)
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
        " per process (forked after the imports, single-threaded, two at a time). `activations` ="
        " distinct storages saved by autograd and alive when"
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
    parser.add_argument("--serve", help="internal: measure these JSON configurations")
    parser.add_argument("--workers", type=int, default=2, help="measurements at a time")
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(json.loads(args.serve), args.workers)), flush=True)
        return
    print(run(args.smoke).body)


if __name__ == "__main__":
    main()
