"""One training run (a RunSpec) and the gradient-norm-against-K measurement."""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import time
import warnings
from pathlib import Path

import torch

from draft_lightning.source_commit import source_commit
from experiments import methods
from experiments.recorder import Recorder
from experiments.settings import ExperimentSettings, RunSpec

warnings.filterwarnings("ignore", message=".*eval mode.*")
warnings.filterwarnings("ignore", message=".*self.log.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parents[1]
# The attribute each task rewards: (attribute, value).
TASKS = {"circle": ("shape", "circle"), "red": ("colour", "red")}


# What `make experiments` itself writes into the checkout: not a change to the code.
OUTPUTS = ("docs/experiments.md", "docs/images/experiments")
# Files of the driver that only write the report: changing them cannot change a run.
REPORT_ONLY = ("report.py", "plots.py", "claims.py", "stats.py", "ground_truth.py")


def commit() -> str:
    """The code's short commit, `-dirty` with uncommitted changes to tracked files other
    than the report this command writes: recorded with every run."""
    return source_commit(ROOT, not_changes=OUTPUTS) or "unknown (not a git checkout)"


def code_fingerprint() -> str:
    """Hash of the Python code a run executes, as it is on disk (the imported package and
    this driver, committed or not): a run resumes only with the code it started with, and a
    commit that changes no code (a report, the notes) does not discard a run in progress."""
    import draft_lightning

    package = Path(draft_lightning.__file__).parent
    driver = Path(__file__).parent
    files = [(package, p) for p in sorted(package.rglob("*.py"))]
    files += [(driver, p) for p in sorted(driver.glob("*.py")) if p.name not in REPORT_ONLY]
    digest = hashlib.sha1()
    for root, path in files:
        digest.update(f"{root.name}/{path.relative_to(root).as_posix()}".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def prompts(settings: ExperimentSettings, task: str) -> tuple[list[str], list[str]]:
    """Training prompts and the fixed validation prompts of a task: the main task trains on
    every fully stated caption; the red control trains and validates on the first
    `ddpo_control_prompts` captions that state everything but the colour (fixed shuffle)."""
    if not settings.use_toy_reward:
        if task == "red":
            return ["a circle", "a square"], ["a circle", "a square"]
        return ["a red circle", "a blue square", "a cat", "a dog"], ["a red circle", "a cat"]
    from draft_lightning.toy import world

    generator = torch.Generator().manual_seed(12345)
    if task == "red":
        colourless = [
            caption
            for caption in world.all_captions(include_partial=True)
            if set(world.parse_caption(caption)) == set(world.ATTRIBUTES) - {"colour"}
        ]
        order = torch.randperm(len(colourless), generator=generator).tolist()
        chosen = [colourless[i] for i in order[: settings.ddpo_control_prompts]]
        return chosen, chosen
    captions = world.all_captions()
    order = torch.randperm(len(captions), generator=generator).tolist()
    return captions, [captions[i] for i in order[: settings.num_val_prompts]]


def reward(settings: ExperimentSettings, task: str):
    if not settings.use_toy_reward:
        from draft_lightning.rewards import Brightness

        return Brightness()
    from draft_lightning.toy.rewards import ToyAttributeReward

    attribute, value = TASKS[task]
    return ToyAttributeReward(
        attribute=attribute,
        value=value,
        classifier=settings.classifier,
        temperature=settings.reward_temperature,
    )


def judge(task: str):
    """The toy judge asked the task's question (its verdicts: how many images show it)."""
    from draft_lightning.toy.judge import ToyJudgeReward

    attribute, value = TASKS[task]
    return ToyJudgeReward(attribute=attribute, value=value, name="judge")


def build_module(settings: ExperimentSettings, spec: RunSpec):
    from draft_lightning.baselines.ddpo import DDPOModule
    from draft_lightning.models.lora import LoraSettings
    from draft_lightning.module import DraftModule
    from draft_lightning.samplers.settings import SamplingSettings

    kwargs = {
        "reward": reward(settings, spec.task),
        "heldout_rewards": [judge(spec.task)],
        "pretrained_model": settings.pretrained_model or "toy:sd",
        "sampling": SamplingSettings(
            spec.num_steps, settings.guidance_scale, 0.0, settings.resolution
        ),
        "lora": LoraSettings(rank=settings.lora_rank),
        "optimizer": lambda params: torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0),
        "seed": spec.seed,
        **methods.module_options(settings, spec),
    }
    torch.manual_seed(spec.seed)  # the LoRA's random A
    return (DDPOModule if spec.ddpo else DraftModule)(**kwargs)


def resumable(checkpoints: Path, code: str) -> Path | None:
    """The run's last.ckpt if it can be resumed: readable, and written by the same code
    (`code_fingerprint`; a run must not mix code)."""
    last = checkpoints / "last.ckpt"
    if not last.is_file():
        return None
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - truncated or not a checkpoint: start afresh
        return None
    records = (checkpoint.get("callbacks") or {}).get(Recorder.__qualname__) or {}
    return last if records.get("code") == code else None


def train(settings: ExperimentSettings, spec: RunSpec, checkpoints: Path | None = None) -> dict:
    """Fit one run; return its per-step and per-evaluation records, the final adapter at
    other strengths, the empty prompt's samples, and the base and final samples of the
    validation captions (for grids and the judge's verdicts).

    With `checkpoints`, the run writes its last.ckpt there after every optimiser step (the
    adapter, optimiser, data position, RNG states and the records), and a run cut short
    resumes from it where it stopped, with the records an uninterrupted run would have: runs
    of an hour or more then survive the end of a session. A checkpoint of other code is
    discarded and the run starts afresh. The caller makes sure that one process at a time
    uses `checkpoints` (run_all.Cache.claim)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from draft_lightning.data import PromptDataModule
    from draft_lightning.training.checkpoint_io import AtomicCheckpointIO
    from draft_lightning.training.pending_validation import PendingValidation
    from draft_lightning.training.stop_signals import StopOnSignal

    code = code_fingerprint()
    recorder = Recorder(
        (lambda m: {"unconditional": unconditional_samples(m, settings, 1.0)})
        if spec.track_diversity
        else None,
        commit=commit(),
        code=code,
    )
    resume = resumable(checkpoints, code) if checkpoints is not None else None
    if checkpoints is not None and resume is None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    module = build_module(settings, spec)
    train_prompts, val_prompts = prompts(settings, spec.task)
    data = PromptDataModule(
        train_prompts=train_prompts,
        val_prompts=val_prompts,
        batch_size=settings.ddpo_batch_size if spec.ddpo else settings.batch_size,
        val_batch_size=8,
        num_val_prompts=len(val_prompts),
        num_val_seeds=settings.num_val_seeds,
        seed=spec.seed,
    )
    saving = []
    if checkpoints is not None:
        # Each step's checkpoint is written before that step's validation;
        # PendingValidation runs a validation the stopped run still owed; SIGTERM or SIGINT
        # stops at a step boundary with a checkpoint (RunInterrupted, exit status 143/130).
        saving = [
            ModelCheckpoint(
                dirpath=checkpoints, save_last=True, save_top_k=0, every_n_train_steps=1
            ),
            PendingValidation(),
            StopOnSignal(),
        ]
    base = validation_samples(module, settings, val_prompts, spec.task)
    trainer = Trainer(
        accelerator="cpu",
        # DDPO: two PPO updates (optimiser steps) per sampled batch.
        max_steps=2 * spec.budget if spec.ddpo else spec.budget,
        val_check_interval=spec.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=-1,
        gradient_clip_val=None if spec.ddpo else 1.0,
        logger=False,
        enable_checkpointing=bool(saving),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, *saving],
        plugins=[AtomicCheckpointIO()] if saving else None,
    )
    trainer.fit(module, data, ckpt_path=resume)
    if recorder.val[-1]["step"] != trainer.global_step:  # evaluate the final adapter
        trainer.validate(module, data, verbose=False)
    scaled = {}
    for scale in spec.lora_scales:
        module.lora_scale = scale
        trainer.validate(module, data, verbose=False)  # `validate` uses lora_scale
        scaled[f"{scale:g}"] = dict(recorder.val.pop())
        scaled[f"{scale:g}"]["unconditional"] = unconditional_samples(module, settings, scale)
        module.lora_scale = 1.0
    return {
        "train": recorder.train,
        "val": recorder.val,
        "lora_scaled": scaled,
        "unconditional": {
            f"{scale:g}": unconditional_samples(module, settings, scale) for scale in (0.0, 1.0)
        },
        "samples": {
            "base": base,
            "final": validation_samples(module, settings, val_prompts, spec.task),
        },
        "commit": recorder.commit,
        "started": recorder.started,
        "wall_seconds": recorder.wall_seconds(),
        "resumed": recorder.resumed,
    }


@torch.no_grad()
def validation_samples(module, settings: ExperimentSettings, val_prompts, task: str) -> dict:
    """The validation captions' images (validation seeds 0..n-1, the adapter as it is), as
    uint8 bytes for the grids, with the judge's verdict on each."""
    pairs = [(p, s) for p in val_prompts for s in range(settings.num_val_seeds)]
    images = torch.cat(
        [
            module.generate([p for p, _ in pairs[i : i + 8]], [s for _, s in pairs[i : i + 8]])
            for i in range(0, len(pairs), 8)
        ]
    )
    verdicts = module.heldout_rewards[0].verdicts(images, [p for p, _ in pairs])
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return {
        "prompts": [p for p, _ in pairs],
        "seeds": [s for _, s in pairs],
        "shape": list(pixels.shape),
        "pixels": base64.b64encode(pixels.numpy().tobytes()).decode(),
        "judge_verdicts": [bool(v) for v in verdicts],
    }


def decode_pixels(samples: dict) -> torch.Tensor:
    """validation_samples' images back as a uint8 tensor [N, 3, H, W]."""
    raw = bytearray(base64.b64decode(samples["pixels"]))
    return torch.frombuffer(raw, dtype=torch.uint8).reshape(samples["shape"])


@torch.no_grad()
def unconditional_samples(module, settings: ExperimentSettings, lora_scale: float) -> dict:
    """Mean reward and diversity of `diversity_seeds` images for the empty prompt at this LoRA
    strength. The toy model learned the empty prompt as its caption-dropout branch, so its
    samples vary in every attribute; fine-tuning that collapses them shows up here."""
    from draft_lightning.evaluation.diversity import mean_pairwise_distance

    seeds = [10_000 + i for i in range(settings.diversity_seeds)]
    empty = [""] * len(seeds)
    module.lora_scale = lora_scale
    module.use_generation_adapters()
    images = torch.cat(
        [module.generate(empty[i : i + 8], seeds[i : i + 8]) for i in range(0, len(seeds), 8)]
    )
    features = module.reward.image_features(images)
    cosine = features is not None
    if not cosine:  # pixels, as val/diversity does for rewards without an embedding
        features = torch.nn.functional.interpolate(images.float(), size=(32, 32), mode="area")
    value = module.reward(images, empty).float().mean()
    module.lora_scale = 1.0
    module.use_training_adapter()
    return {
        "reward": float(value),
        "diversity": float(mean_pairwise_distance(features.flatten(1), cosine)),
    }


def gradient_norms(settings: ExperimentSettings, seed: int, num_steps: int) -> dict:
    """LoRA gradient norm of DRaFT-K's loss at the pretrained model, for each K of claim 3,
    on fixed batches: how the gradient through K sampling steps grows with K (the paper's
    Figure 4)."""
    from draft_lightning.estimators import DraftK

    started = time.time()
    module = build_module(settings, RunSpec(methods.ONE, seed, num_steps=num_steps))
    train_prompts, _ = prompts(settings, "circle")
    generator = torch.Generator().manual_seed(seed)
    ks = settings.grad_norm_ks(num_steps)
    norms: dict[str, list[float]] = {str(k): [] for k in ks}
    for batch_index in range(settings.grad_norm_batches):
        rows = torch.randint(len(train_prompts), (settings.batch_size,), generator=generator)
        batch = [train_prompts[i] for i in rows.tolist()]
        for k in ks:
            module.estimator = DraftK(min(k, num_steps))
            for p in module.trainable_parameters():
                p.grad = None
            module.seed = 1000 * seed + batch_index  # fresh noise per batch, same for every K
            loss = module.training_step({"prompts": batch}, 0)
            grads = torch.autograd.grad(loss, module.trainable_parameters(), allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
            norms[str(k)].append(float(norm))
    return {"norms": norms, "commit": commit(), "started": started}
