"""The run's config.yaml, written once the command has really started, never over an
earlier run's."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from draft_lightning.training.run_files import remove_stale_temporaries, write_atomically


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's SaveConfigCallback, with three differences that keep the record of how a
    run was made:

    - it writes when the work starts (the first training or evaluation batch's hooks), not
      in `setup`: a command refused after setup (a checkpoint that does not fit the model,
      say) has written nothing;
    - a resumed run does not overwrite the config.yaml it logs on beside: its own config
      goes to `config-resumed-step=<N>.yaml` (`...-2.yaml` for a second resume from step N);
    - the file is written atomically;
    - before writing it, the temporaries of atomic writes that a killed process left in the
      run's folder are deleted.

    And a command that fails before its work starts takes back the TensorBoard events file
    that Lightning opened in setup (and the version folder, if that leaves it empty): a
    refused resume leaves the run's folder as it found it.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Nothing yet (see the class docstring)."""

    def _write(self, trainer: Trainer) -> None:
        if self.already_saved:
            return
        self.already_saved = True
        log_dir = trainer.log_dir  # every rank: this broadcasts the directory
        if not trainer.is_global_zero or log_dir is None or "://" in str(log_dir):
            return
        remove_stale_temporaries(Path(log_dir))  # of a process killed mid-write
        path = Path(log_dir) / self.config_filename
        stem, count = f"{path.stem}-resumed-step={trainer.global_step}", 1
        while path.exists():  # an earlier run's, or an earlier resume's at the same step
            path = path.with_name(f"{stem}{f'-{count}' if count > 1 else ''}{path.suffix}")
            count += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.parser.dump(self.config, skip_none=False)
        write_atomically(path, text.encode())

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return  # the work had started: what it logged is part of the run
        for logger in trainer.loggers:
            writer = getattr(logger, "_experiment", None)  # None: never opened
            if isinstance(logger, TensorBoardLogger) and writer is not None:
                file_writer = getattr(writer, "file_writer", None)
                if file_writer is not None:
                    events = Path(file_writer.event_writer._file_name)
                    events.unlink(missing_ok=True)  # the open handle writes to nothing now
                    if events.parent.is_dir() and not any(events.parent.iterdir()):
                        events.parent.rmdir()

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)
