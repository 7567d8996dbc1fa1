"""`lightning plan --config <the files fit takes> [--memory 24GiB]`: peak memory by role, TFLOP
per step and the largest batch that fits, planned offline without weights (plan.py)."""

from __future__ import annotations

import sys
import time
import warnings

from draft_lightning.errors import ConfigError
from draft_lightning.planning.plan import (
    GIB,
    Fit,
    StepPlan,
    largest_batch,
    make_optimizer,
    parse_memory,
    plan_step,
)

USAGE = (
    "usage: lightning plan --config CONFIG [--config OVERLAY ...] [--memory SIZE] "
    "[--model.KEY VALUE ...]"
)
# The planned step runs on the meta device: the Trainer is only built to parse the config.
TRAINER_OVERRIDES = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.logger=false",
    "--trainer.num_nodes=1",
]


def split_arguments(args: list[str]) -> tuple[list[str], list[int]]:
    """(the arguments fit would take, the --memory sizes in bytes)."""
    rest, memories = [], []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-h", "--help"):
            print(USAGE)
            print(__doc__)
            raise SystemExit(0)
        if arg == "--memory" or arg.startswith("--memory="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif index + 1 < len(args):
                index += 1
                value = args[index]
            else:
                raise ConfigError("--memory needs a size, e.g. --memory 24GiB")
            memories.append(parse_memory(value))
        else:
            rest.append(arg)
        index += 1
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        raise ConfigError("plan needs --config with the file(s) `lightning fit` would take")
    return rest, memories


def parse_fit(args: list[str], cli_class: type):
    """The LightningCLI of `lightning fit` over `args` (model and data built, nothing run).
    `cli_class` is the class the command line parses with (`draft_lightning.cli._cli_class()`),
    passed in so that the command line, which dispatches `plan` here, stays the only importer
    of both."""
    import draft_lightning.estimators  # noqa: F401
    import draft_lightning.rewards  # noqa: F401
    from draft_lightning.base_module import RewardFineTuningModule
    from draft_lightning.data import PromptDataModule

    with warnings.catch_warnings():
        # LightningCLI warns when it gets `args` while sys.argv has arguments too: here the
        # arguments are sys.argv's own, minus `plan` and --memory, plus the CPU overrides.
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        return cli_class(
            RewardFineTuningModule,
            PromptDataModule,
            subclass_mode_model=True,
            run=False,
            save_config_callback=None,
            args=[*args, *TRAINER_OVERRIDES],
        )


def build(args: list[str], cli_class: type, device: str = "meta"):
    """(module, batch size, precision) from fit's config files, weightless (`device="cpu"`:
    with random weights instead, to measure what the plan predicts)."""
    from draft_lightning.module import DraftModule
    from draft_lightning.planning.weightless import weightless

    with weightless(device):
        cli = parse_fit(args, cli_class)
    if not isinstance(cli.model, DraftModule):
        raise ConfigError(
            f"plan covers DraftModule's estimators; model is {type(cli.model).__name__}"
        )
    if device == "meta":
        # compile_unet: the plan counts every denoiser call as its eager ops (a compiled call
        # fuses them and holds no more). Compiling would trace the meta tensors through
        # dynamo for nothing, and the discarded forward of a differentiated call
        # (samplers/recompute.py) would be recomputed where the meta autocast stand-in
        # (planning/autocast.py) is not active.
        cli.model.sampler.compiled = None
    precision = str(cli.config.get("trainer", {}).get("precision"))
    return cli.model, cli.datamodule.batch_size, precision


def describe(module, batch: int) -> str:
    settings = module.sampling
    estimator = module.estimator
    return (
        f"{module.pretrained_model} ({module.pipeline.family.display_name}), "
        f"{estimator!r}, batch {batch}, {settings.resolution} px, {settings.num_steps} steps"
    )


def report(module, plan: StepPlan, precision: str, fits: list[Fit], seconds: float) -> str:
    roles = plan.peak.by_role
    lines = [
        f"plan: {describe(module, plan.batch)}",
        f"  planned on the meta device without weights in {seconds:.0f} s",
        f"peak memory                         {plan.peak_bytes / GIB:8.2f} GiB",
        f"  frozen weights                    {roles['frozen'] / GIB:8.2f} GiB",
        f"  trainable weights + grads + optim {roles['trainable'] / GIB:8.2f} GiB",
        f"  activations saved for backward    {roles['saved'] / GIB:8.2f} GiB",
        f"  transient (in flight, recompute)  {roles['transient'] / GIB:8.2f} GiB",
        f"compute                             {plan.flops / 1e12:8.2f} TFLOP per step",
    ]
    for fit in fits:
        size = f"{fit.memory / GIB:.1f} GiB"
        verdict = "fits" if plan.peak_bytes <= fit.memory else "does NOT fit"
        if fit.largest_batch:
            largest = (
                f"largest batch {fit.largest_batch} (peak {fit.plan.peak_bytes / GIB:.2f} GiB)"
            )
        else:
            largest = "not even batch 1 fits"
        lines.append(f"memory {size}: batch {plan.batch} {verdict}; {largest}")
    if "mixed" in precision:
        lines.append(f"precision {precision}: autocast's casts reproduced on the meta device")
    lines.append(
        "not included: the CUDA context and allocator fragmentation (typically 0.5-2 GiB), "
        "gradient clipping's norms"
    )
    return "\n".join(lines)


def main(args: list[str], cli_class: type) -> None:
    start = time.perf_counter()
    rest, memories = split_arguments(args)
    module, batch, precision = build(rest, cli_class)
    optimizer = make_optimizer(module)
    plan = plan_step(module, optimizer, batch, precision)
    fits = []
    if memories:
        plans = [plan, plan_step(module, optimizer, batch + 1 if batch == 1 else 1, precision)]
        fits = [largest_batch(module, optimizer, plans, memory, precision) for memory in memories]
    print(report(module, plan, precision, fits, time.perf_counter() - start))
    sys.stdout.flush()
