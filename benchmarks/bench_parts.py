"""Overhead of a training step against the sum of its parts (issue 8, table 1).

Why: if the real step (DraftModule.training_step + backward + optimiser, by hand or through
a Lightning Trainer) costs clearly more than its pieces timed alone, the framework adds
overhead that a hand-written loop would not pay. Pieces and steps alternate in one process.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.bench_parts [--smoke]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from benchmarks.common import (
    Section,
    alternate,
    build_module,
    fmt_ratio,
    median,
    prompts,
    table,
    train_step,
)

PART_NAMES = ("text", "prefix", "window", "decode", "reward", "optimiser")


def part_fns(module, estimator, batch: int) -> dict[str, Callable[[], object]]:
    """Each piece of one step, alone, with the step's own shapes. Pieces hand their outputs
    on through `state`, so every piece sees real inputs; gradients entering a piece from the
    next one are fixed random tensors of the right shape."""
    from draft_lightning.estimators import DraftK, DraftLV

    sampler = module.sampler
    steps = sampler.num_steps
    state: dict = {}
    text_prompts = prompts(batch)
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-9)

    def text():
        state["text"] = module.pipeline.prompt_encoder.condition(
            text_prompts, sampler.settings.guidance_scale
        )
        state["noise"] = torch.randn(batch, *module.pipeline.latent_shape)

    def prefix():
        text_ = state["text"]
        with torch.no_grad():
            if isinstance(estimator, DraftK):
                start = steps - estimator.k
                x = sampler.sample(state["noise"], text_, grad_from=steps, stop=start).latents
            else:  # DraftLV: the whole chain without gradient, then n re-noised copies
                x0 = sampler.sample(state["noise"], text_, grad_from=steps).latents
                start = steps - 1
                x0 = x0.repeat(estimator.n, 1, 1, 1)
                x = sampler.renoise(x0, torch.randn_like(x0), start)
                text_ = text_.repeat(estimator.n)
        state.update(x=x, start=start, window_text=text_)

    def window():
        out = sampler.sample(
            state["x"], state["window_text"], grad_from=state["start"], start=state["start"]
        ).latents
        out.backward(torch.randn_like(out))
        state["latents"] = out.detach()

    def decode():
        z = state["latents"].requires_grad_()
        images = module.pipeline.decode(z)
        images.backward(torch.randn_like(images))
        state["images"] = images.detach()

    def reward():
        images = state["images"].requires_grad_()
        copies = images.shape[0] // batch
        score, _ = module.reward.score(images, text_prompts * copies)
        (-score.mean()).backward()

    def optimise():
        torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    assert isinstance(estimator, DraftK | DraftLV)
    fns = [text, prefix, window, decode, reward, optimise]
    return dict(zip(PART_NAMES, fns, strict=True))


def lightning_step_fn(module, batch: int) -> Callable[[], float]:
    """One optimiser step through a fresh lightning Trainer; returns the timed batch seconds
    (Trainer set-up, the data loader and teardown are outside the timed span)."""
    import time

    from lightning.pytorch import Callback, Trainer

    class BatchTimer(Callback):
        def __init__(self) -> None:
            self.seconds = 0.0

        def on_train_batch_start(self, *args) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.seconds = time.perf_counter() - self._start

    data = [{"prompts": prompts(batch)}]

    def run() -> float:
        timer = BatchTimer()
        trainer = Trainer(
            accelerator="cpu",
            max_steps=1,
            gradient_clip_val=1.0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[timer],
        )
        loader = torch.utils.data.DataLoader(data, batch_size=None)
        trainer.fit(module, train_dataloaders=loader)
        module.trainer = None  # the hand step logs nothing, as a module outside a Trainer
        return timer.seconds

    return run


def measure(estimator, resolution: int, num_steps: int, batch: int, rounds: int) -> dict:
    """Per round: every part once, one hand-written step, one Lightning step (rotating)."""
    import time

    module = build_module(resolution, num_steps, estimator=estimator)
    parts = part_fns(module, estimator, batch)
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-9)
    lightning = lightning_step_fn(module, batch)
    part_times: dict[str, list[float]] = {name: [] for name in PART_NAMES}
    lightning_times: list[float] = []

    def all_parts() -> None:
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            part_times[name].append(time.perf_counter() - start)

    def by_hand() -> None:
        train_step(module, optimizer, batch)

    def through_lightning() -> None:
        lightning_times.append(lightning())

    times = alternate(
        {"parts": all_parts, "step": by_hand, "lightning": through_lightning}, rounds, warmup=1
    )
    drop = len(part_times["text"]) - rounds  # warm-up calls
    part_times = {k: v[drop:] for k, v in part_times.items()}
    lightning_times = lightning_times[drop:]
    sums = [sum(part_times[name][r] for name in PART_NAMES) for r in range(rounds)]
    step_over_sum = [s / p for s, p in zip(times["step"], sums, strict=True)]
    lightning_over_sum = [s / p for s, p in zip(lightning_times, sums, strict=True)]
    return {
        "parts": {name: median(v) for name, v in part_times.items()},
        "sum": median(sums),
        "step": median(times["step"]),
        "lightning": median(lightning_times),
        "step_over_sum": (median(step_over_sum), min(step_over_sum), max(step_over_sum)),
        "lightning_over_sum": (
            median(lightning_over_sum),
            min(lightning_over_sum),
            max(lightning_over_sum),
        ),
    }


def run(smoke: bool = False) -> Section:
    from draft_lightning.estimators import DraftK

    if smoke:
        resolution, num_steps, batch, rounds = 32, 2, 1, 1
    else:
        resolution, num_steps, batch, rounds = 64, 50, 2, 3
    estimators = {"DRaFT-1": DraftK(1)}
    results = {
        name: measure(est, resolution, num_steps, batch, rounds) for name, est in estimators.items()
    }
    rows = []
    for name, r in results.items():
        share = "; ".join(f"{p} {100 * r['parts'][p] / r['sum']:.1f}%" for p in PART_NAMES)
        rows.append(
            [
                name,
                share,
                fmt_ratio(r["step_over_sum"]),
                fmt_ratio(r["lightning_over_sum"]),
                f"{r['sum']:.2f} / {r['step']:.2f} / {r['lightning']:.2f}",
            ]
        )
    body = table(
        [
            "estimator",
            "parts (share of their sum)",
            "hand step / sum",
            "Lightning step / sum",
            "s: sum / hand / Lightning",
        ],
        rows,
    )
    body += (
        f"\n\nShapes: {resolution}x{resolution} px (latents 4x{resolution // 2}x{resolution // 2}),"
        f" batch {batch}, {num_steps} DDIM steps, guidance 7.5, LoRA rank 8, brightness reward."
        f" {rounds} rounds after one warm-up, parts and steps alternating; ratios are the median"
        " (min-max) over rounds of the step divided by the sum of the parts in the same round."
        " The parts: `text` = prompt encoding (uncond cached) and x_T; `prefix` = the no-grad"
        " steps; `window` = the differentiated"
        " step(s), forward and backward with checkpoint recompute, from a fixed random output"
        " gradient; `decode` = VAE decode forward and backward (checkpointed); `reward` ="
        " reward forward and backward; `optimiser` = clip + AdamW step + zero_grad. The hand"
        " step is DraftModule.training_step + backward + clip + AdamW; the Lightning step is one"
        " batch of Trainer.fit timed from on_train_batch_start to on_train_batch_end."
    )
    data = {name: {k: v for k, v in r.items()} for name, r in results.items()}
    return Section("1. Training step against the sum of its parts", "", body, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one round")
    print(run(parser.parse_args().smoke).body)


if __name__ == "__main__":
    main()
