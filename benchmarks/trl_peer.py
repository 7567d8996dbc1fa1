"""Ours against TRL's AlignPropTrainer, in one process of the TRL venv (benchmarks/.venv-trl,
which holds trl 0.23.1 and this project, on the same torch/diffusers/peft versions).

Why one process: steps of both trainers alternate, so machine drift hits both alike, and
the same autograd hooks and profiler measure both. TRL runs unmodified; we only time its
public `AlignPropTrainer.step` and, for activation memory, wrap its accelerator's backward
to look at what autograd holds at that moment. Prints one JSON line.

    benchmarks/.venv-trl/bin/python -m benchmarks.trl_peer [--smoke]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import warnings

import torch

from benchmarks.common import (
    SavedTensors,
    alternate,
    build_module,
    commit,
    median,
    peak_allocated,
    prompts,
    ratio,
    train_step,
)

TRL_LORA_RANK = 4  # fixed inside TRL's DefaultDDPOStableDiffusionPipeline (alpha 4)
# Ours runs as the shipped GPU configs set it: the no-grad denoiser calls compiled; the LoRA
# merged for them and the first attention shared by the guided halves are defaults.
OURS_OPTIONS = {"compile_unet": True}


def build_trl(resolution: int, steps: int, batch: int, logdir: str):
    """AlignPropTrainer on the tiny SD folder, settings matched to ours (see module doc)."""
    import accelerate
    from trl import AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline

    from draft_lightning.rewards import Brightness
    from draft_lightning.testing.tiny_sd import tiny_sd_path

    accelerate.PartialState()  # TRL's own warning path needs it on a LoRA-less folder
    pipeline = DefaultDDPOStableDiffusionPipeline(str(tiny_sd_path()), use_lora=True)
    reward = Brightness()
    cycle = itertools.cycle(prompts(batch))

    def reward_fn(images, prompt_list, metadata):
        return reward(images, list(prompt_list)), {}

    config = AlignPropConfig(
        sample_num_steps=steps,
        sample_guidance_scale=7.5,
        sample_eta=0.0,
        train_batch_size=batch,
        mixed_precision="no",
        save_freq=10**9,
        log_with=None,
        logdir=logdir,
        project_kwargs={"project_dir": logdir},
        truncated_backprop_rand=False,
        truncated_backprop_timestep=steps - 1,
        train_gradient_accumulation_steps=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AlignPropTrainer(config, reward_fn, lambda: (next(cycle), {}), pipeline)
    # TRL samples at the UNet config's default size (no option for it): set ours there.
    sd = pipeline.sd_pipeline
    sd.unet.register_to_config(sample_size=resolution // sd.vae_scale_factor)
    return trainer


def run(smoke: bool) -> dict:
    from draft_lightning.estimators import DraftK
    from draft_lightning.models.lora import LoraSettings

    measured = commit()  # before anything runs: the code this process imported
    resolution, steps, batch, rounds = (32, 2, 1, 1) if smoke else (64, 50, 2, 2)
    ks = (1, steps)
    ours = build_module(
        resolution,
        steps,
        estimator=DraftK(1),
        lora=LoraSettings(rank=TRL_LORA_RANK, alpha=4),
        **OURS_OPTIONS,
    )
    optimizer = torch.optim.AdamW(ours.trainable_parameters(), lr=1e-9)
    # Compiling happens on the first no-grad call, once per process: timed here, outside
    # the profiled memory step and the timed rounds.
    start = time.perf_counter()
    train_step(ours, optimizer, batch)
    compile_seconds = time.perf_counter() - start
    print(f"[trl_peer] ours' first step (compiling): {compile_seconds:.0f} s", file=sys.stderr)
    blocks = build_module(
        resolution,
        steps,
        estimator=DraftK(1),
        lora=LoraSettings(rank=TRL_LORA_RANK, alpha=4),
        checkpoint_blocks=True,
    )
    blocks_optimizer = torch.optim.AdamW(blocks.trainable_parameters(), lr=1e-9)
    with tempfile.TemporaryDirectory() as logdir:
        theirs = build_trl(resolution, steps, batch, logdir)
        counter = itertools.count(1)

        def our_step(k: int, module=ours, opt=optimizer):
            def fn() -> None:
                module.estimator = DraftK(k)
                train_step(module, opt, batch)

            return fn

        def their_step(k: int):
            def fn() -> None:
                # TRL differentiates timestep indices >= truncated_backprop_timestep.
                theirs.config.truncated_backprop_timestep = steps - k
                n = next(counter)
                theirs.step(n, n)

            return fn

        variants = {}
        for k in ks:
            variants[f"ours K={k}"] = reported(f"ours K={k}", our_step(k))
            variants[f"TRL K={k}"] = reported(f"TRL K={k}", their_step(k))
        # The profiled memory step of each variant is also its warm-up.
        memory = {name: measure_memory(name, fn, theirs) for name, fn in variants.items()}
        name = "ours checkpoint_blocks K=1"
        memory[name] = measure_memory(name, our_step(1, blocks, blocks_optimizer), theirs)
        times = alternate(variants, rounds, warmup=0)
    result = {
        "resolution": resolution,
        "steps": steps,
        "batch": batch,
        "rounds": rounds,
        "lora_rank": TRL_LORA_RANK,
        "ours_options": OURS_OPTIONS,
        "first_step_seconds": compile_seconds,
        "commit": measured,
        "threads": f" ({torch.get_num_threads()} torch threads)",
        "times": {name: median(v) for name, v in times.items()},
        "ratios": {k: ratio(times, f"ours K={k}", f"TRL K={k}") for k in ks},
        "memory": memory,
        "versions": versions(),
    }
    return result


def reported(name: str, fn):
    """`fn`, printing each call's seconds to stderr (a long run shows its progress)."""

    def call() -> None:
        start = time.perf_counter()
        fn()
        print(f"[trl_peer] {name}: {time.perf_counter() - start:.2f} s", file=sys.stderr)

    return call


def measure_memory(name: str, fn, trainer) -> dict:
    """Activation bytes alive when backward starts, and the step's allocation peak."""
    saved = SavedTensors()
    seen: dict[str, int] = {}
    accelerator = trainer.accelerator
    original_backward = accelerator.backward

    def backward(loss, **kwargs):  # TRL's step calls accelerator.backward(loss)
        seen["live"] = saved.live()
        return original_backward(loss, **kwargs)

    def step() -> None:
        with saved.recording():
            if name.startswith("ours"):
                # Our module's step: training_step builds the graph, then backward.
                original = torch.Tensor.backward

                def spy(tensor, *args, **kwargs):
                    seen.setdefault("live", saved.live())
                    return original(tensor, *args, **kwargs)

                torch.Tensor.backward = spy
                try:
                    fn()
                finally:
                    torch.Tensor.backward = original
            else:
                accelerator.backward = backward
                try:
                    fn()
                finally:
                    accelerator.backward = original_backward

    _, peak = peak_allocated(step)
    return {"activation_bytes": seen.get("live", 0), "peak_step_bytes": peak}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("trl", "torch", "diffusers", "transformers", "peft", "accelerate")
    return {name: version(name) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one round")
    print(json.dumps(run(parser.parse_args().smoke)), flush=True)


if __name__ == "__main__":
    main()
