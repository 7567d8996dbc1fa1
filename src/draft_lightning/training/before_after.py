"""The picture a run ends with: the base model's validation images above the tuned
adapter's (evaluation/comparison.py), logged as `val/comparison` and written as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from draft_lightning.errors import ConfigError
from draft_lightning.evaluation.comparison import comparison_grid
from draft_lightning.training.logger_media import log_image, write_image_file
from draft_lightning.training.run_files import run_dir

KEPT = ("prompts", "seeds", "thumbnails", "scores")  # of an evaluation, for the picture


class BeforeAfter(Callback):
    """Base model above tuned adapter: `val/comparison` and `<log dir>/comparison.png`.

    Keeps the base model's validation samples (the evaluation at step 0) and, at every
    later validation, logs `val/comparison` (base on top, tuned below, same prompts and
    seeds, each image's reward in its caption) to every logger and rewrites
    `<log dir>/<filename>`, so the file always shows the latest adapter; RunSummary prints
    where it is. The base samples travel in checkpoints, so a resumed run still compares.

    Args:
        cell_size: each image is drawn this many pixels square.
        max_pairs: at most this many (prompt, seed) columns.
        prompt_lines: caption lines a prompt may take before it is shortened in the middle.
        filename: the PNG's name in the run's log folder; null writes no file.
    """

    def __init__(
        self,
        cell_size: int = 96,
        max_pairs: int = 8,
        prompt_lines: int = 4,
        filename: str | None = "comparison.png",
    ) -> None:
        if cell_size < 16 or max_pairs < 1 or prompt_lines < 1:
            raise ConfigError(
                f"comparison cell_size={cell_size} (>= 16), max_pairs={max_pairs} (>= 1), "
                f"prompt_lines={prompt_lines} (>= 1) out of range"
            )
        if filename is not None and (not filename.endswith(".png") or "/" in filename):
            raise ConfigError(f"comparison filename={filename!r} must be a file name ending .png")
        self.cell_size = cell_size
        self.max_pairs = max_pairs
        self.prompt_lines = prompt_lines
        self.filename = filename
        self.base: dict[str, list] | None = None
        self.written: Path | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base = state_dict.get("base")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        evaluation = getattr(pl_module, "last_evaluation", None)
        if not evaluation or not evaluation["prompts"] or trainer.state.fn != "fit":
            return
        if trainer.sanity_checking and trainer.num_sanity_val_steps != float("inf"):
            return  # a partial sanity pass is not the base model's evaluation
        if evaluation["step"] == 0:
            self.base = {key: list(evaluation[key]) for key in KEPT}
            return
        if self.base is None:
            return  # no step-0 evaluation: nothing to compare against
        grid = comparison_grid(
            self.base, evaluation, self.cell_size, self.max_pairs, self.prompt_lines
        )
        log_image(trainer, "val/comparison", grid, evaluation["step"])
        if self.filename is not None and trainer.is_global_zero:
            path = run_dir(trainer) / self.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image_file(path, grid)
            self.written = path
