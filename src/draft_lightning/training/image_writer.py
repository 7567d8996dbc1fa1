"""`lightning predict` output: PNGs and a manifest of prompts, seeds, adapters and rewards."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from draft_lightning.training.run_files import run_dir, write_atomically


class ImageWriter(BasePredictionWriter):
    """`lightning predict` output: one PNG per (prompt, seed) and a JSONL manifest.

    The manifest has the prompt, seed, file, adapter weights and reward scores of each
    image.

    Files are written atomically; the manifest is built as `manifest.jsonl.partial` and
    renamed at the end, so a finished manifest always matches the images on disk.

    Args:
        output_dir: where the images go (default: `<log_dir>/predictions`).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def folder(self, trainer: Trainer) -> Path:
        folder = Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def manifest(self, trainer: Trainer) -> Path:
        suffix = "" if trainer.world_size == 1 else f".rank{trainer.global_rank}"
        return self.folder(trainer) / f"manifest{suffix}.jsonl"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        partial = self.manifest(trainer).with_suffix(".jsonl.partial")
        partial.unlink(missing_ok=True)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        from torchvision.io import encode_png

        folder = self.folder(trainer)
        adapters = adapter_description(pl_module)
        lines = []
        for i, (prompt, seed) in enumerate(
            zip(prediction["prompts"], prediction["seeds"], strict=True)
        ):
            name = f"{batch_idx:05d}_{i:02d}_seed{seed}.png"
            pixels = (prediction["images"][i] * 255).round().clamp(0, 255).to(torch.uint8)
            write_atomically(folder / name, encode_png(pixels).numpy().tobytes())
            rewards = {k: float(v[i]) for k, v in prediction["rewards"].items()}
            entry = {"prompt": prompt, "seed": int(seed), "file": name, "adapters": adapters}
            lines.append(json.dumps({**entry, "rewards": rewards}))
        partial = self.manifest(trainer).with_suffix(".jsonl.partial")
        with open(partial, "a", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        manifest = self.manifest(trainer)
        partial = manifest.with_suffix(".jsonl.partial")
        if partial.exists():
            os.replace(partial, manifest)
            rank_zero_info(f"predictions: {manifest.parent}")


def adapter_description(pl_module: LightningModule) -> list[dict[str, Any]]:
    if getattr(pl_module, "mix", None):
        return [
            {"path": path, "weight": weight}
            for path, weight in zip(pl_module.mix, pl_module.mix_weights, strict=True)
        ]
    return [{"path": "trained", "weight": getattr(pl_module, "lora_scale", 1.0)}]
