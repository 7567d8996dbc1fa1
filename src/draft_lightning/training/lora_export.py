"""The trained adapter exported at every checkpoint and at the end: diffusers' format, and
on request kohya-ss's (AUTOMATIC1111, ComfyUI), each with a model card."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from draft_lightning.errors import ConfigError
from draft_lightning.evaluation.image_grid import evaluation_grid
from draft_lightning.models.families import ModelFamily
from draft_lightning.training.checkpoint_io import AtomicCheckpointIO
from draft_lightning.training.logger_media import png_bytes
from draft_lightning.training.model_card import SAMPLES_NAME, CardFacts, model_card
from draft_lightning.training.run_files import run_dir
from draft_lightning.training.run_settings import reward_description, run_settings

LoraFormat = Literal["diffusers", "kohya"]


class LoraExport(Callback):
    """Export the trained adapter at every checkpoint and at the end, with a model card.

    `<log_dir>/lora/step=<N>/` and `<log_dir>/lora/last/` (and `lora/best/`, written by
    the best checkpoint when it changes), each folder written whole
    (temporary folder, then rename) with a `README.md` model card and the latest
    validation grid (`samples.png`).

    An export at a checkpoint is written once the checkpoint file is in place (the
    checkpoint IO calls back, or, for a save it does not report, the next hook), so
    `lora/last` is never ahead of `last.ckpt`; a resumed run whose `lora/last` is behind
    its checkpoint (killed between the two) exports again before training.

    Only rank 0 writes. Under DDP nothing here waits on other ranks; a sharded adapter is first
    gathered, a collective that every rank reaches because Lightning runs both hooks on every
    rank, so the file is the whole adapter, as an unsharded run writes it.

    Args:
        dirname: folder under the run directory.
        keep_steps: keep one `step=<N>` export per checkpoint (else only `last`).
        formats: "diffusers" (`pytorch_lora_weights.safetensors`, for
            `pipe.load_lora_weights(folder)`) and/or "kohya" (`lora_kohya.safetensors`, for
            AUTOMATIC1111, ComfyUI, SD.Next, InvokeAI; SD 1.x/2.x and SDXL only).
        model_card: write `README.md` (with the Hub's metadata block) and `samples.png`.
    """

    def __init__(
        self,
        dirname: str = "lora",
        keep_steps: bool = True,
        formats: list[LoraFormat] | None = None,
        model_card: bool = True,
    ) -> None:
        formats = list(formats) if formats is not None else ["diffusers"]
        if not formats or any(f not in ("diffusers", "kohya") for f in formats):
            raise ConfigError(f"lora_export.formats={formats} must list diffusers and/or kohya")
        self.dirname = dirname
        self.keep_steps = keep_steps
        self.formats = list(dict.fromkeys(formats))
        self.model_card = model_card

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_formats(self.formats, pl_module.pipeline.family)  # cli checks it before, if it can
        self.pending: Callable[[], None] | None = None
        io = trainer.strategy.checkpoint_io
        self.checkpoint_io = io if isinstance(io, AtomicCheckpointIO) else None
        if self.checkpoint_io is not None:
            self.checkpoint_io.after_save.append(self.write_pending)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.write_pending()
        if self.checkpoint_io is not None and self.write_pending in self.checkpoint_io.after_save:
            self.checkpoint_io.after_save.remove(self.write_pending)

    def export(
        self, trainer: Trainer, pl_module: LightningModule, step: int, now: bool = True
    ) -> None:
        """Export the adapter as it is at `step`: now, or (`now=False`) at write_pending."""
        folders = [f"step={step}", "last"] if self.keep_steps else ["last"]
        self.export_as(trainer, pl_module, step, *folders, now=now)

    def export_as(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        step: int,
        *folders: str,
        now: bool = True,
    ) -> None:
        """Write the adapter of `step` into each of `folders` under the export folder (the
        best checkpoint exports `best` this way): now, or (`now=False`) once its checkpoint
        is in place (write_pending). Every rank must call it."""
        state = pl_module.pipeline.lora_state()  # gathered on every rank when sharded
        if trainer.global_rank != 0:
            return
        state = {name: value.detach().clone() for name, value in state.items()}
        root = run_dir(trainer) / self.dirname
        extra = self.card_files(trainer, pl_module, step) if self.model_card else {}
        # Written by the family's own pipeline class, so its load_lora_weights reads it.
        formats = tuple(self.formats)

        def write() -> None:
            for folder in folders:
                pl_module.pipeline.save_lora(root / folder, state, formats, extra)

        if now:
            write()
        else:
            self.pending = write

    def write_pending(self, checkpoint_path: Path | None = None) -> None:
        """Write the export held back until its checkpoint was in place."""
        pending, self.pending = getattr(self, "pending", None), None
        if pending is not None:
            pending()

    def card_files(
        self, trainer: Trainer, pl_module: LightningModule, step: int
    ) -> dict[str, bytes]:
        """README.md and, once an evaluation has run, samples.png."""
        history = getattr(pl_module, "eval_history", [])
        # The adapter's own evaluations: step 0 is the base model's.
        history = [(s, v) for s, v in history if 0 < s <= step and "val/reward" in v]
        evaluation = getattr(pl_module, "last_evaluation", None)
        if evaluation is not None and (
            evaluation["stage"] != "val" or evaluation["step"] > step or not evaluation["prompts"]
        ):
            evaluation = None
        latest = history[-1] if history else None
        facts = CardFacts(
            base_model=str(pl_module.pretrained_model),
            pipeline_class=pl_module.pipeline.family.pipeline_class,
            family=pl_module.pipeline.family.name,
            reward=reward_description(pl_module.reward),
            step=step,
            settings=run_settings(trainer, pl_module),
            formats=self.formats,
            base_reward=getattr(pl_module, "base_reward", None),
            export_reward=(latest[0], latest[1]["val/reward"]) if latest else None,
            samples_step=evaluation["step"] if evaluation else None,
            sample_prompt=evaluation["prompts"][0] if evaluation else None,
        )
        files = {"README.md": model_card(facts).encode()}
        if evaluation is not None:
            files[SAMPLES_NAME] = png_bytes(evaluation_grid(evaluation, 128, 8))
        return files

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called before the checkpoint is written: the export waits for it (write_pending).
        self.export(trainer, pl_module, checkpoint["global_step"], now=False)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        behind = False
        if trainer.global_rank == 0:
            behind = not self.matches_last_export(trainer, pl_module)
        if trainer.strategy.broadcast(behind, src=0):  # killed between checkpoint and export
            self.export(trainer, pl_module, trainer.global_step)

    def matches_last_export(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Whether `lora/last` holds this (just restored) adapter, weight for weight."""
        from safetensors.torch import load_file

        file = run_dir(trainer) / self.dirname / "last" / "pytorch_lora_weights.safetensors"
        if "diffusers" not in self.formats:
            return True  # nothing here to compare with: leave it
        if not file.is_file():
            return False
        return fingerprint(load_file(file)) == fingerprint(pl_module.pipeline.lora_state())

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self.write_pending()  # a save the checkpoint IO did not report (sharded folders)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write_pending()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self.pending = None  # its checkpoint may not have been written: never run ahead

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module, trainer.global_step)


def check_formats(formats: list[str], family: ModelFamily) -> None:
    """Refuse the kohya format for a family kohya-ss has no layout for."""
    if "kohya" in formats and family.lora_component != "unet":
        raise ConfigError(
            f"lora_export.formats={list(formats)} has kohya, which is for SD 1.x/2.x and SDXL; "
            f"this model is {family.display_name}: use [diffusers]"
        )


def fingerprint(state: dict[str, torch.Tensor]) -> list[tuple]:
    """Each tensor's shape, sum and norm, sorted: equal for the same weights under
    diffusers' names and peft's, different once a step has changed them."""
    return sorted(
        (tuple(t.shape), float(t.double().sum()), float(t.double().norm())) for t in state.values()
    )
