"""The trained adapter exported at every checkpoint and at the end: diffusers' format, and
on request kohya-ss's (AUTOMATIC1111, ComfyUI), each with a model card."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer

from draft_lightning.errors import ConfigError
from draft_lightning.evaluation.image_grid import evaluation_grid
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
        family = pl_module.pipeline.family
        if "kohya" in self.formats and family.lora_component != "unet":
            raise ConfigError(
                f"lora_export.formats has kohya, which is for SD 1.x/2.x and SDXL; this "
                f"model is {family.display_name}: use [diffusers]"
            )

    def export(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        folders = [f"step={step}", "last"] if self.keep_steps else ["last"]
        self.export_as(trainer, pl_module, step, *folders)

    def export_as(
        self, trainer: Trainer, pl_module: LightningModule, step: int, *folders: str
    ) -> None:
        """Write the adapter of `step` into each of `folders` under the export folder (the
        best checkpoint exports `best` this way). Every rank must call it."""
        state = pl_module.pipeline.lora_state()  # gathered on every rank when sharded
        if trainer.global_rank != 0:
            return
        root = run_dir(trainer) / self.dirname
        extra = self.card_files(trainer, pl_module, step) if self.model_card else {}
        # Written by the family's own pipeline class, so its load_lora_weights reads it.
        for folder in folders:
            pl_module.pipeline.save_lora(root / folder, state, tuple(self.formats), extra)

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
        self.export(trainer, pl_module, checkpoint["global_step"])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module, trainer.global_step)
