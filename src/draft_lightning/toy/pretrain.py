"""`make toy`: train the toy classifier (the reward's) and the judge (an independent check of
it), then a tiny SD-1.x-style text-to-image model on the toy world, save it as a diffusers
folder and report how often its images match their captions.

    python -m draft_lightning.toy.pretrain                      # defaults: docs/toy.md
    python -m draft_lightning.toy.pretrain --settings.unet_steps 200 --output /tmp/toy-sd

The model folder (default $DRAFT_LIGHTNING_CACHE/toy-sd) has SD 1.4's layout and loads with
`model.pretrained_model: <folder>`; the text encoder and tokenizer are the built-in tiny
model's (frozen, random CLIP text encoder), the VAE and UNet are trained here. Both output
folders are written beside their target and renamed into place when complete.
"""

# ruff: noqa: E402 - START is taken before the (slow) imports, so the total includes them
from __future__ import annotations

import time

START = time.perf_counter()

import json
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from draft_lightning.errors import ConfigError
from draft_lightning.source_commit import source_commit
from draft_lightning.toy import world
from draft_lightning.toy.architecture import ToyArchitecture, build_unet, build_vae
from draft_lightning.toy.classifier import (
    ToyClassifier,
    accuracy,
    load_classifier,
    save_classifier,
)
from draft_lightning.toy.data import HELD_OUT_SEED, batch, loader
from draft_lightning.toy.judge import ToyJudge, save_judge
from draft_lightning.toy.paths import (
    CLASSIFIER_FOLDER,
    JUDGE_FOLDER,
    atomic_folder,
    default_classifier_path,
    default_judge_path,
    default_model_path,
)

warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


@dataclass(frozen=True)
class PretrainSettings:
    """Everything `make toy` trains and measures (docs/toy.md: how long it takes).

    Args:
        classifier_steps: optimiser steps of the attribute classifier.
        classifier_batch: images per classifier step.
        judge_steps: optimiser steps of the judge (toy/judge.py).
        judge_batch: images per judge step.
        judge_seed: seeds the judge's weights, data stream and degradations (not `seed`'s).
        vae_steps: optimiser steps of the VAE.
        vae_batch: images per VAE step.
        vae_kl_weight: weight of the mean KL per latent element against the pixel MSE.
        unet_steps: optimiser steps of the UNet.
        unet_batch: images per UNet step.
        unet_lr: peak UNet learning rate (linear warm-up, cosine decay to 0).
        caption_dropout: probability of the empty prompt in a UNet step (for guidance).
        attribute_dropout: probability of leaving each optional attribute (colour, size,
            position, background) out of a UNet step's caption.
        architecture: VAE and UNet sizes.
        held_out_images: rendered held-out images for the classifier and VAE figures.
        quality_images: generated images per guidance scale in the quality report.
        quality_steps: DDIM steps for those images.
        guidance_scales: classifier-free guidance scales to report.
        seed: seeds weights, data order and noise.
    """

    classifier_steps: int = 1000
    classifier_batch: int = 128
    judge_steps: int = 600
    judge_batch: int = 128
    judge_seed: int = 1009
    vae_steps: int = 1600
    vae_batch: int = 16
    vae_kl_weight: float = 1e-6
    unet_steps: int = 2000
    unet_batch: int = 32
    unet_lr: float = 2e-3
    caption_dropout: float = 0.1
    attribute_dropout: float = 0.2
    architecture: ToyArchitecture = field(default_factory=ToyArchitecture)
    held_out_images: int = 1024
    quality_images: int = 256
    quality_steps: int = 20
    guidance_scales: tuple[float, ...] = (1.0, 3.0, 5.0)
    seed: int = 0


class Progress(Callback):
    """One line every `every` steps: stage, step, loss, elapsed seconds."""

    def __init__(self, stage: str, every: int) -> None:
        self.stage, self.every, self.start = stage, every, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
            elapsed = time.perf_counter() - self.start
            print(
                f"[{self.stage}] step {step}/{trainer.max_steps} loss {loss:.4f} ({elapsed:.0f} s)",
                flush=True,
            )


def _trainer(max_steps: int, stage: str) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Progress(stage, every=max(1, max_steps // 10))],
    )


def train_reader(
    model, stage: str, steps: int, batch_size: int, seed: int, held_out_images: int
) -> dict[str, float]:
    """Train a network that reads attributes (the classifier or the judge) on degraded renders
    of the world with `seed`; return its held-out accuracy per attribute."""
    from draft_lightning.toy.classifier_training import ClassifierTraining

    seed_everything(seed, verbose=False)
    task = ClassifierTraining(model, max_steps=steps, seed=seed)
    _trainer(steps, stage).fit(task, loader(seed, batch_size))
    model.eval()
    held_out = batch(HELD_OUT_SEED, 0, held_out_images)
    return accuracy(model, held_out["images"], held_out["labels"])


def train_classifier(settings: PretrainSettings) -> tuple[ToyClassifier, dict[str, float]]:
    """Train the attribute classifier; return it with its held-out accuracy per attribute."""
    seed_everything(settings.seed, verbose=False)  # the weights' initialisation
    model = ToyClassifier()
    s = settings
    return model, train_reader(
        model, "classifier", s.classifier_steps, s.classifier_batch, s.seed, s.held_out_images
    )


def train_judge(settings: PretrainSettings) -> tuple[ToyJudge, dict[str, float]]:
    """Train the judge like the classifier (rendered ground truth, degraded), with its own
    seed and data stream; return it with its held-out accuracy per attribute."""
    seed_everything(settings.judge_seed, verbose=False)  # the weights' initialisation
    model = ToyJudge()
    s = settings
    return model, train_reader(
        model, "judge", s.judge_steps, s.judge_batch, s.judge_seed, s.held_out_images
    )


def make_judge(settings: PretrainSettings, output: str | Path | None = None) -> dict[str, float]:
    """Train and save the judge (atomically) into `output` (default: the cache's toy-judge);
    return its held-out accuracy."""
    output = Path(output).expanduser() if output else default_judge_path()
    judge, judge_accuracy = train_judge(settings)
    with atomic_folder(output) as tmp:
        save_judge(judge, tmp, {"held_out_accuracy": judge_accuracy, "seed": settings.judge_seed})
    print(f"judge held-out accuracy: {_fmt(judge_accuracy)}", flush=True)
    return judge_accuracy


def train_vae(settings: PretrainSettings, classifier: ToyClassifier) -> tuple[object, dict]:
    """Train the VAE and set its scaling_factor; report held-out reconstruction error and the
    classifier's accuracy on reconstructions (an upper bound for generated images)."""
    from draft_lightning.toy.vae_training import VAETraining, latent_scaling_factor, reconstruct

    seed_everything(settings.seed + 1, verbose=False)
    vae = build_vae(settings.architecture)
    task = VAETraining(
        vae,
        kl_weight=settings.vae_kl_weight,
        max_steps=settings.vae_steps,
        seed=settings.seed + 1,
    )
    _trainer(settings.vae_steps, "vae").fit(task, loader(settings.seed + 1, settings.vae_batch))
    vae.eval()
    held_out = batch(HELD_OUT_SEED, 0, settings.held_out_images)
    scale = latent_scaling_factor(vae, held_out["images"])
    vae.register_to_config(scaling_factor=scale)
    rebuilt = reconstruct(vae, held_out["images"])
    report = {
        "scaling_factor": scale,
        "reconstruction_mse": torch.mean((rebuilt - held_out["images"]) ** 2).item(),
        "classifier_accuracy_on_reconstructions": accuracy(classifier, rebuilt, held_out["labels"]),
    }
    return vae, report


def load_text_parts():
    """The built-in tiny model's tokenizer and frozen CLIP text encoder, and its folder."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from draft_lightning.testing.tiny_sd import tiny_sd_path

    folder = tiny_sd_path()
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    return tokenizer, text_encoder.requires_grad_(False).eval(), folder


def train_unet(settings: PretrainSettings, vae, tokenizer, text_encoder):
    """Train the UNet on the frozen VAE's latents with the frozen text encoder's embeddings."""
    from draft_lightning.toy.unet_training import UNetTraining, caption_table

    seed_everything(settings.seed + 2, verbose=False)
    captions = world.all_captions(include_partial=True)
    embeddings = caption_table(tokenizer, text_encoder, captions)
    unet = build_unet(settings.architecture, text_encoder.config.hidden_size)
    task = UNetTraining(
        unet,
        vae,
        captions,
        embeddings,
        lr=settings.unet_lr,
        warmup_steps=min(100, settings.unet_steps // 10),
        max_steps=settings.unet_steps,
        caption_dropout=settings.caption_dropout,
        attribute_dropout=settings.attribute_dropout,
        seed=settings.seed + 2,
    )
    _trainer(settings.unet_steps, "unet").fit(task, loader(settings.seed + 2, settings.unet_batch))
    return unet.eval()


def save_pipeline(folder: Path, vae, unet, tokenizer, text_encoder, tiny_folder: Path) -> Path:
    """SD 1.4's folder layout: model_index.json, unet/, vae/, text_encoder/, tokenizer/,
    scheduler/ (PNDM with SD 1.4's config, which the project's loader turns into DDIM)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from draft_lightning.testing.tiny_sd import SD_SCHEDULER_CONFIG

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    # The tiny model's tokenizer files are SD 1.x's exact set; keep them rather than
    # whatever the tokenizer's own save writes.
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(tiny_folder / "tokenizer", folder / "tokenizer")
    return folder


def pretrain(
    output: str | Path | None = None,
    classifier_output: str | Path | None = None,
    settings: PretrainSettings | None = None,
    judge_output: str | Path | None = None,
    reuse: str | Path | None = None,
) -> dict:
    """Train and save the classifier, the judge and the model; return (and save as
    quality.json in the model folder) the measured figures. With `reuse` (an earlier `make
    toy`'s cache folder), the classifier, judge and VAE are taken from there (toy/reuse.py)."""
    from draft_lightning.toy.quality import generation_quality

    settings = settings or PretrainSettings()
    output = Path(output).expanduser() if output else default_model_path()
    classifier_output = (
        Path(classifier_output).expanduser() if classifier_output else default_classifier_path()
    )
    judge_output = Path(judge_output).expanduser() if judge_output else default_judge_path()
    # The code that trains, read before anything can change the checkout.
    commit = source_commit(Path(__file__).parent, length=40)
    timings: dict[str, float] = {}
    reused: dict | None = None
    clock = time.perf_counter()

    if reuse is not None:
        from draft_lightning.toy import reuse as reusing

        reuse = Path(reuse).expanduser()
        earlier = reusing.earlier_report(reuse)
        reusing.check_reusable(earlier, settings)  # before anything is trained or written
        reusing.copy_stage_folder(reuse / CLASSIFIER_FOLDER, classifier_output)
        reusing.copy_stage_folder(reuse / JUDGE_FOLDER, judge_output)
        classifier = load_classifier(classifier_output)
        classifier_accuracy = earlier["classifier_held_out_accuracy"]
        judge_accuracy = earlier["judge_held_out_accuracy"]
        vae, vae_report = reusing.reused_vae(reuse), earlier["vae"]
        reused = {
            "from": str(reuse),
            "commit": earlier.get("commit"),
            "stages": list(reusing.STAGE_SETTINGS),
        }
        timings["reuse_s"] = time.perf_counter() - clock
        print(f"reused the classifier, judge and VAE of {reuse} ({reused['commit']})", flush=True)
    else:
        classifier, classifier_accuracy = train_classifier(settings)
        with atomic_folder(classifier_output) as tmp:
            save_classifier(classifier, tmp, {"held_out_accuracy": classifier_accuracy})
        timings["classifier_s"] = time.perf_counter() - clock
        print(f"classifier held-out accuracy: {_fmt(classifier_accuracy)}", flush=True)

        clock = time.perf_counter()
        judge_accuracy = make_judge(settings, judge_output)
        timings["judge_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        vae, vae_report = train_vae(settings, classifier)
        timings["vae_s"] = time.perf_counter() - clock
        print(f"vae: {json.dumps(vae_report)}", flush=True)

    clock = time.perf_counter()
    tokenizer, text_encoder, tiny_folder = load_text_parts()
    unet = train_unet(settings, vae, tokenizer, text_encoder)
    timings["unet_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    with atomic_folder(output) as tmp:
        save_pipeline(tmp, vae, unet, tokenizer, text_encoder, tiny_folder)
        quality = generation_quality(
            tmp,
            classifier,
            classifier_output,
            num_images=settings.quality_images,
            guidance_scales=settings.guidance_scales,
            num_steps=settings.quality_steps,
            grid=tmp / "samples.png",
        )
        timings["quality_s"] = time.perf_counter() - clock
        report = {
            "commit": commit,
            "world_version": world.WORLD_VERSION,
            "classifier": str(classifier_output),
            "classifier_held_out_accuracy": classifier_accuracy,
            "judge_held_out_accuracy": judge_accuracy,
            "vae": vae_report,
            "reused": reused,
            "generation": quality,
            "timings": timings,
            "settings": asdict(settings),
        }
        (tmp / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


def _quiet() -> None:
    """Keep the output to our progress lines and figures (no per-fit banners, no load bars)."""
    import logging

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from draft_lightning.training.quiet import quiet_lightning_noise

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    quiet_lightning_noise()


def main(
    output: str | None = None,
    classifier_output: str | None = None,
    judge_output: str | None = None,
    settings: PretrainSettings = PretrainSettings(),  # noqa: B008 - frozen dataclass
    reuse: str | None = None,
) -> None:
    """Pretrain the toy classifier, judge and text-to-image model and print their figures.

    Args:
        output: model folder (default $DRAFT_LIGHTNING_CACHE/toy-sd).
        classifier_output: classifier folder (default $DRAFT_LIGHTNING_CACHE/toy-classifier).
        judge_output: judge folder (default $DRAFT_LIGHTNING_CACHE/toy-judge).
        settings: what to train and measure.
        reuse: an earlier `make toy`'s cache folder (e.g. ~/.cache/draft_lightning) whose
            classifier, judge and VAE were trained with these settings: copy them from
            there and train only the UNet (refused, naming the setting, if they differ).
    """
    _quiet()
    try:
        report = pretrain(output, classifier_output, settings, judge_output, reuse)
    except ConfigError as error:
        import sys

        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None  # a bad value, as the other commands exit
    folder = Path(output).expanduser() if output else default_model_path()
    print(f"model: {folder}")
    print(f"classifier held-out accuracy: {_fmt(report['classifier_held_out_accuracy'])}")
    print(f"judge held-out accuracy: {_fmt(report['judge_held_out_accuracy'])}")
    generation = report["generation"]
    print(
        f"caption agreement of {generation['num_images']} generated images "
        f"({generation['num_steps']} DDIM steps); chance: {_fmt(generation['chance'])}"
    )
    for scale, agreement in generation["by_guidance"].items():
        print(f"  guidance {scale}: {_fmt(agreement)}")
    print(f"captions leaving one attribute unsaid (guidance {generation['unsaid_guidance']}):")
    for attribute, unsaid in generation["unsaid"].items():
        print(
            f"  {attribute}: drawn {_fmt(unsaid['drawn'])}; "
            f"stated attributes agree {unsaid['stated_agreement']:.3f}"
        )
    print(f"report: {folder / 'quality.json'}")
    total = time.perf_counter() - START
    print(f"total wall time: {total / 60:.1f} min ({total:.0f} s)")


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main, as_positional=False)
