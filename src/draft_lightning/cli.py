"""The `lightning` and `draft-lightning` commands: one LightningCLI over DraftModule and
PromptDataModule (fit, validate, test, predict).

A refused configuration prints exactly one line, `error: <message>`, and exits with status 2:
a bad value (ConfigError), weights that cannot be found (ModelUnavailableError), a Trainer
setting Lightning refuses, or a value jsonargparse cannot parse (without its usage dump).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
import warnings

from draft_lightning.errors import ConfigError, ModelUnavailableError

# LightningCLI seeds (and logs "Seed set to N") after parsing and before building the classes
# that validate the config; the message is held back until they are built, and dropped if the
# config is refused.
SEED_LOGGER = "lightning.fabric.utilities.seed"


class _HoldRecords(logging.Filter):
    """Keeps a logger's records instead of emitting them, to replay (or drop) later."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def _cli_class():
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.cli import LightningCLI

    class DraftCLI(LightningCLI):
        """LightningCLI whose bad-input errors surface as one line instead of a traceback."""

        def init_parser(self, **kwargs):
            # Parse errors raise ArgumentError (printed by main as one `error:` line) instead
            # of printing the full usage of every Trainer option before the message.
            kwargs.setdefault("exit_on_error", False)
            return super().init_parser(**kwargs)

        def parse_arguments(self, parser, args) -> None:
            super().parse_arguments(parser, args)
            self._held_seed_records = _HoldRecords()
            logging.getLogger(SEED_LOGGER).addFilter(self._held_seed_records)

        def instantiate_classes(self) -> None:
            # Building the classes validates the config. Until they are built, the seed message
            # and any warning (e.g. Lightning's environment hints in Trainer.__init__) are held
            # back: a refused config prints only its error line. Replacing showwarning (rather
            # than catch_warnings) keeps the registry of shown warnings, so one that Lightning
            # repeats later is still printed once.
            seed_logger = logging.getLogger(SEED_LOGGER)
            show_warning = warnings.showwarning
            held_warnings = []
            warnings.showwarning = lambda *args, **kwargs: held_warnings.append((args, kwargs))
            refused = False
            try:
                super().instantiate_classes()
            except (ConfigError, ModelUnavailableError):
                refused = True
                raise
            except ValueError as error:
                cause = _user_error(error)
                if cause is None:
                    raise
                refused = True
                raise cause from error
            finally:
                seed_logger.removeFilter(self._held_seed_records)
                warnings.showwarning = show_warning
                if not refused:
                    for record in self._held_seed_records.records:
                        seed_logger.handle(record)
                    for args, kwargs in held_warnings:
                        show_warning(*args, **kwargs)

        def instantiate_trainer(self, **kwargs):
            try:
                return super().instantiate_trainer(**kwargs)
            except MisconfigurationException as error:
                # Trainer settings Lightning refuses, e.g. accelerator: gpu without a GPU.
                raise ConfigError(f"trainer: {error}") from error

    return DraftCLI


def _user_error(error: BaseException) -> BaseException | None:
    """The ConfigError/ModelUnavailableError behind an error that jsonargparse wrapped, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ConfigError | ModelUnavailableError):
            return error
        error = error.__cause__ or error.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of both console scripts."""
    from jsonargparse import ArgumentError

    # Import every estimator and reward before the parser is built, so that `--help` lists
    # them as known subclasses of --model.estimator and --model.reward.
    import draft_lightning.estimators  # noqa: F401
    import draft_lightning.rewards  # noqa: F401
    from draft_lightning.data import PromptDataModule
    from draft_lightning.module import DraftModule

    try:
        _cli_class()(
            DraftModule,
            PromptDataModule,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ConfigError, ModelUnavailableError, ArgumentError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
