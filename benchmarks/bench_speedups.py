"""Which speed-ups pay on this machine (issue 8, item 5), measured rather than assumed.

Why: each candidate (one UNet batch for cond + uncond, SDPA attention, channels_last, merging
LoRA for the no-grad steps, torch.compile of the UNet, block-level checkpointing, no host
syncs) has a cost or a risk; it becomes an option, or a default, only if it wins here.
No-grad sampling (the last `sample_steps` steps of the 50-step schedule, plus decode) is
timed per variant on its own copy of the same model, alternating; training steps compare
the default module with each opt-in option.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.bench_speedups [--smoke] [--no-compile]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from benchmarks.common import (
    Section,
    alternate,
    build_module,
    fmt_ratio,
    prompts,
    ratio,
    table,
    train_step,
)


def no_grad_sample(module, batch: int, steps: int) -> None:
    """The last `steps` sampling steps without gradient, then decode: a prefix's work."""
    text = module.pipeline.condition(prompts(batch))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, *module.pipeline.latent_shape, generator=generator)
    sampler = module.sampler
    with torch.no_grad():
        start = sampler.num_steps - steps
        latents = sampler.sample(noise, text, grad_from=sampler.num_steps, start=start).latents
        module.pipeline.decode(latents)


def separate_calls(sampler):
    """The sampler's guided prediction with cond and uncond as two UNet calls (the naive way)."""

    def guided(latents, index, text):
        timestep = sampler.timestep(index, latents)
        c = sampler.call(sampler.denoiser, latents, timestep, text.cond)
        u = sampler.call(sampler.denoiser, latents, timestep, text.uncond)
        return u + sampler.settings.guidance_scale * (c - u)

    return guided


def sampling_modules(resolution: int, steps: int, compiled) -> dict:
    """One module per no-grad variant (all the same weights)."""
    from diffusers.models.attention_processor import AttnProcessor

    modules = {
        "default (one UNet batch, SDPA, LoRA merged, first attention shared)": build_module(
            resolution, steps
        ),
        "cond and uncond as two UNet calls": build_module(resolution, steps),
        "classic attention (no SDPA)": build_module(resolution, steps),
        "channels_last": build_module(resolution, steps, channels_last=True),
        "merge_lora_without_grad=False": build_module(
            resolution, steps, merge_lora_without_grad=False
        ),
        "share_first_attention=False": build_module(resolution, steps, share_first_attention=False),
    }
    two = modules["cond and uncond as two UNet calls"].sampler
    two.guided = separate_calls(two)
    modules["classic attention (no SDPA)"].pipeline.denoiser.set_attn_processor(AttnProcessor())
    if compiled is not None:
        modules["compile_unet"] = compiled
    return modules


def step_times(resolution, steps, batch, estimator, rounds, compiled=None) -> dict:
    """Training steps of the default module and each opt-in option, alternating."""
    options = {
        "default": {},
        "merge_lora_without_grad=False": {"merge_lora_without_grad": False},
        "share_first_attention=False": {"share_first_attention": False},
        "checkpoint_blocks": {"checkpoint_blocks": True},
        "channels_last": {"channels_last": True},
    }
    if estimator.k == steps:  # full DRaFT has no prefix to merge
        del options["merge_lora_without_grad=False"]
    modules = {
        name: build_module(resolution, steps, estimator=estimator, **kw)
        for name, kw in options.items()
    }
    if compiled is not None and estimator.k < steps:
        compiled.estimator = estimator
        modules["compile_unet"] = compiled
    elif compiled is not None:  # each call's discarded forward (samplers/recompute.py)
        # Another step count: this one compiles in the untimed warm-up round.
        modules["compile_unet"] = build_module(
            resolution, steps, estimator=estimator, compile_unet=True
        )
    fns = {}
    for name, module in modules.items():
        optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-9)
        fns[name] = functools.partial(train_step, module, optimizer, batch)
    return alternate(fns, rounds, warmup=1)


def host_syncs(resolution: int, steps: int, batch: int) -> int:
    """Tensor-to-Python conversions (.item(), int(tensor), bool(tensor)) during one no-grad
    sampling loop: each is a host-device sync on a GPU. Counted by patching the converters."""
    module = build_module(resolution, steps)
    count = 0
    names = ("item", "__int__", "__bool__", "__float__", "tolist")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            nonlocal count
            count += 1
            return originals[name](self, *args, **kwargs)

        return wrapper

    text = module.pipeline.prompt_encoder.condition(prompts(batch), 7.5)
    noise = torch.randn(batch, *module.pipeline.latent_shape)
    for name in names:
        setattr(torch.Tensor, name, counting(name))
    try:
        with torch.no_grad():
            module.sampler.sample(noise, text, grad_from=module.sampler.num_steps)
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    return count


def run(smoke: bool = False, compile_unet: bool = True) -> Section:
    from draft_lightning.estimators import DraftK

    if smoke:
        resolution, sample_steps, train_steps, full_steps, batch, rounds = 32, 2, 2, 2, 1, 1
        compile_unet = False
    else:
        resolution, sample_steps, train_steps, full_steps, batch, rounds = 64, 10, 50, 10, 2, 3
    compiled, compile_seconds = None, None
    if compile_unet:
        compiled = build_module(resolution, train_steps, compile_unet=True)
        start = time.perf_counter()
        no_grad_sample(compiled, batch, 1)  # the first call compiles
        compile_seconds = time.perf_counter() - start
    modules = sampling_modules(resolution, train_steps, compiled)
    fns = {
        name: functools.partial(no_grad_sample, m, batch, sample_steps)
        for name, m in modules.items()
    }
    sampling = alternate(fns, rounds, warmup=1)
    base = "default (one UNet batch, SDPA, LoRA merged, first attention shared)"
    rows = [
        [name, fmt_ratio(ratio(sampling, name, base)), f"{min(t):.2f}"]
        for name, t in sampling.items()
    ]
    body = f"No-grad sampling ({resolution} px, batch {batch}, {sample_steps} steps + decode):\n\n"
    body += table(["variant", "time / default (median, min-max)", "s (best)"], rows)

    step_rows, step_data = [], {}
    for label, estimator, steps in (
        (f"DRaFT-1, {train_steps} steps", DraftK(1), train_steps),
        (f"full DRaFT, {full_steps} steps", DraftK(full_steps), full_steps),
    ):
        times = step_times(resolution, steps, batch, estimator, max(rounds - 1, 1), compiled)
        for name in times:
            if name != "default":
                stats = ratio(times, name, "default")
                step_data[f"{label}: {name}"] = stats
                step_rows.append([label, name, fmt_ratio(stats), f"{min(times['default']):.2f}"])
    body += f"\n\nTraining steps ({resolution} px, batch {batch}), options against the default:\n\n"
    body += table(
        ["estimator", "option", "time / default (median, min-max)", "default s (best)"], step_rows
    )
    syncs = host_syncs(resolution, sample_steps, batch)
    body += (
        f"\n\nHost syncs (tensor -> Python conversions) in one {sample_steps}-step no-grad"
        f" sampling loop: {syncs}."
    )
    if compile_seconds is not None:
        body += (
            f" compile_unet's first call (compiling, then one step) took {compile_seconds:.0f} s."
        )
    data = {
        "sampling": {name: ratio(sampling, name, base) for name in sampling},
        "steps": step_data,
        "host_syncs": syncs,
        "compile_seconds": compile_seconds,
    }
    return Section("5. Speed-ups, measured", "", body, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, no compile")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    print(run(args.smoke, compile_unet=not args.no_compile).body)


if __name__ == "__main__":
    main()
