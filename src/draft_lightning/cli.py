"""The `lightning` and `draft-lightning` commands: one LightningCLI over DraftModule and
PromptDataModule (fit, validate, test, predict)."""

from __future__ import annotations

import sys

from draft_lightning.errors import ConfigError, ModelUnavailableError


def _cli_class():
    from lightning.pytorch.cli import LightningCLI

    class DraftCLI(LightningCLI):
        """LightningCLI whose bad-input errors surface as one line instead of a traceback."""

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ConfigError, ModelUnavailableError):
                raise
            except ValueError as error:
                cause = _user_error(error)
                if cause is None:
                    raise
                raise cause from error

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
    from draft_lightning.data import PromptDataModule
    from draft_lightning.module import DraftModule

    try:
        _cli_class()(
            DraftModule,
            PromptDataModule,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ConfigError, ModelUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
