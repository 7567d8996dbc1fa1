"""Our no-grad sampler (DraftModule.generate) against diffusers' StableDiffusionPipeline:
images per second (issue 8, table 4b).

Why: validation and predict sample without gradient, and so does DRaFT-K's prefix; the
sampler must be at least as fast as the reference pipeline. The pipeline runs twice: on the
base UNet loaded from the folder (what a user compares with) and on our UNet with its LoRA
adapter attached (the same work as ours). Same latents, 50 DDIM steps, guidance 7.5,
output as float tensors in [0, 1]. Variants alternate in one process.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.bench_sampler [--smoke]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import Section, alternate, build_module, fmt_ratio, prompts, ratio, table


def pipeline_fn(pipe, module, batch: int, resolution: int, steps: int):
    seeds = list(range(batch))
    noise = torch.stack(
        [
            torch.randn(module.pipeline.latent_shape, generator=torch.Generator().manual_seed(s))
            for s in seeds
        ]
    )

    def fn() -> None:
        pipe(
            prompts(batch),
            height=resolution,
            width=resolution,
            num_inference_steps=steps,
            guidance_scale=7.5,
            latents=noise,
            output_type="pt",
        )

    return fn


def run(smoke: bool = False) -> Section:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from draft_lightning.testing.tiny_sd import tiny_sd_path

    resolution, steps, batch, rounds = (32, 2, 1, 1) if smoke else (64, 50, 2, 2)
    ours = build_module(resolution, steps)
    unmerged = build_module(resolution, steps, merge_lora_without_grad=False)
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_path(), safety_checker=None)
    same = StableDiffusionPipeline(
        vae=ours.pipeline.vae,
        text_encoder=ours.pipeline.prompt_encoder.text_encoder,
        tokenizer=ours.pipeline.prompt_encoder.tokenizer,
        unet=ours.pipeline.denoiser,
        scheduler=DDIMScheduler.from_config(base.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for pipe in (base, same):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
    seeds = list(range(batch))
    variants = {
        "diffusers pipeline, base UNet": pipeline_fn(base, ours, batch, resolution, steps),
        "diffusers pipeline, our UNet + LoRA": pipeline_fn(same, ours, batch, resolution, steps),
        "ours: DraftModule.generate": lambda: ours.generate(prompts(batch), seeds),
        "ours, merge_lora_without_grad=False": lambda: unmerged.generate(prompts(batch), seeds),
    }
    with torch.no_grad():
        times = alternate(variants, rounds, warmup=1)
    reference = "diffusers pipeline, base UNet"
    rows = []
    for name, seconds in times.items():
        images_per_s = batch / min(seconds)
        rows.append(
            [
                name,
                fmt_ratio(ratio(times, reference, name)),
                fmt_ratio(ratio(times, "diffusers pipeline, our UNet + LoRA", name)),
                f"{images_per_s:.2f}",
            ]
        )
    body = table(
        [
            "sampler",
            "speed vs pipeline (base UNet)",
            "speed vs pipeline (our UNet + LoRA)",
            "images/s (best round)",
        ],
        rows,
    )
    body += (
        f"\n\n{resolution} px, batch {batch}, {steps} DDIM steps, guidance 7.5, fp32, no"
        f" gradient; {rounds} rounds after one warm-up, alternating. Speed = pipeline time /"
        " this time in the same round (above 1: faster than the pipeline), median (min-max)."
        " Our LoRA is freshly initialised (B = 0), so all four produce the same images; by"
        " default (float32 weights) ours samples with the LoRA merged into the base weights,"
        " `merge_lora_without_grad=False` keeps the adapter as separate matmuls."
    )
    data = {"times": times, "reference": reference}
    return Section("4b. No-grad sampler against diffusers' pipeline", "", body, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one round")
    print(run(parser.parse_args().smoke).body)


if __name__ == "__main__":
    main()
