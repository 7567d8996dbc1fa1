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

from draft_lightning.errors import ConfigError, ModelUnavailableError, missing_together

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
            # Before LightningCLI reads the checkpoint's hyperparameters (which would fail
            # with a traceback on a corrupt file) and before any model loads.
            subcommand = self.config.get("subcommand")
            config = self.config.get(subcommand) if subcommand else self.config
            if config is not None and config.get("ckpt_path") == "last":
                resume_last(config)
            if config is not None and config.get("ckpt_path"):
                check_checkpoint(str(config["ckpt_path"]))
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
            except ConfigError:
                refused = True
                raise
            except ModelUnavailableError as error:
                refused = True
                raise self._with_missing_models(error) from error
            except ValueError as error:
                cause = _user_error(error)
                if cause is None:
                    raise
                refused = True
                if isinstance(cause, ModelUnavailableError):
                    raise self._with_missing_models(cause) from error
                raise cause from error
            finally:
                seed_logger.removeFilter(self._held_seed_records)
                warnings.showwarning = show_warning
                if not refused:
                    for record in self._held_seed_records.records:
                        seed_logger.handle(record)
                    for args, kwargs in held_warnings:
                        show_warning(*args, **kwargs)

        def _with_missing_models(self, error: ModelUnavailableError) -> ModelUnavailableError:
            """The reward is built before the model: if its weights are missing, say in the
            same line whether the model's are too (resolving them is a cache lookup)."""
            subcommand = self.config.get("subcommand")
            config = self.config.get(subcommand) if subcommand else self.config
            return missing_together([error, *missing_model_downloads(config)])

        def add_arguments_to_parser(self, parser) -> None:
            """Callbacks every run needs, as named groups: an overlay changes one key
            (`checkpoint.every_n_train_steps: 10`) instead of repeating a callbacks list."""
            from lightning.pytorch.callbacks import ModelCheckpoint

            from draft_lightning.training.image_writer import ImageWriter
            from draft_lightning.training.lora_export import LoraExport
            from draft_lightning.training.monitoring import RunMonitor
            from draft_lightning.training.nonfinite_guard import NonFiniteGuard
            from draft_lightning.training.run_summary import RunSummary
            from draft_lightning.training.slurm import SlurmRequeue

            # A config without model.class_path trains DraftModule (flat keys such as
            # --model.pretrained_model fill its arguments); DDPOModule is chosen by class_path.
            parser.set_defaults({"model": {"class_path": "draft_lightning.module.DraftModule"}})
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.save_last": True,
                    "checkpoint.save_top_k": 0,  # only last.ckpt; best_checkpoint selects
                    "checkpoint.every_n_train_steps": 100,
                }
            )
            parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
            parser.set_defaults(
                {
                    "best_checkpoint.monitor": "val/reward",
                    "best_checkpoint.mode": "max",
                    "best_checkpoint.filename": "best-step={step}-reward={val/reward:.4f}",
                    "best_checkpoint.auto_insert_metric_name": False,
                }
            )
            # Lightning's own docstring ends mid-sentence in --help; say what each one is for.
            titles = {
                "checkpoint": "last.ckpt every N steps, for resuming",
                "best_checkpoint": "The checkpoint with the best val/reward",
            }
            for key, title in titles.items():
                parser.groups[key].title = f"{title} (Lightning's ModelCheckpoint)"
            parser.add_lightning_class_args(LoraExport, "lora_export")
            parser.add_lightning_class_args(NonFiniteGuard, "nonfinite_guard")
            parser.add_lightning_class_args(RunMonitor, "monitor")
            parser.add_lightning_class_args(ImageWriter, "predictions")
            parser.add_lightning_class_args(RunSummary, "run_summary")
            parser.add_lightning_class_args(SlurmRequeue, "slurm_requeue")

        def instantiate_trainer(self, **kwargs):
            from lightning.pytorch.plugins.io import CheckpointIO

            from draft_lightning.training.checkpoint_io import AtomicCheckpointIO

            configured = self._get(self.config_init, "trainer", default={}).get("plugins")
            plugins = kwargs.get("plugins", configured) or []
            plugins = plugins if isinstance(plugins, list) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                # Atomic checkpoint files in every run, whatever plugins a config lists.
                kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
            try:
                return super().instantiate_trainer(**kwargs)
            except MisconfigurationException as error:
                # Trainer settings Lightning refuses, e.g. accelerator: gpu without a GPU.
                raise ConfigError(f"trainer: {error}") from error

    return DraftCLI


def resume_last(config) -> None:
    """`--ckpt_path last`: the newest last.ckpt among this run's TensorBoard versions, and log
    on into that version. Lightning alone looks only in the new version's folder, so a run
    preempted under versioned logs would start again from zero. Without any last.ckpt,
    Lightning's own handling remains (a warning, then a fresh start), which suits requeue
    scripts that always pass --ckpt_path last."""
    from pathlib import Path

    logger = config.get("trainer", {}).get("logger")
    if not logger or "TensorBoardLogger" not in str(logger.get("class_path", "")):
        return
    args = logger.get("init_args", {})
    if args.get("version") is not None:
        return
    root = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
    found = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if found:
        config["ckpt_path"] = str(found[-1])
        args["version"] = found[-1].parent.parent.name


def check_checkpoint(path: str) -> None:
    """Refuse a missing or unreadable --ckpt_path in one line before any model loads (else
    Lightning fails with a traceback after the weights are in memory). Lightning's named
    checkpoints ("last" with none found, "best", "hpc") are left to it."""
    from pathlib import Path

    import torch

    if path in ("last", "best", "hpc", "registry"):
        return
    file = Path(path)
    sharded = file.is_dir() and (file / "meta.pt").is_file()  # the sharded strategy's folder
    if sharded:
        file = file / "meta.pt"  # loop state, data position, RNG states; the shards beside it
    if not file.is_file():
        raise ConfigError(f"ckpt_path={path!r}: no such file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - truncated, corrupt or not a checkpoint at all
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"ckpt_path={path!r} is not a readable checkpoint ({first[:160]})"
        ) from None
    required = "loops" if sharded else "state_dict"
    if not isinstance(checkpoint, dict) or required not in checkpoint:
        raise ConfigError(f"ckpt_path={path!r} is not a Lightning checkpoint (no {required})")


def missing_model_downloads(config) -> list[ModelUnavailableError]:
    """What the model's `pretrained_model` and `pretrained_vae` need that is not here, when
    the hub cannot be reached (online, they download when their turn comes)."""
    from draft_lightning import registry
    from draft_lightning.hub import offline_reason
    from draft_lightning.models.loading import resolve_pretrained, resolve_vae

    if offline_reason() is None:
        return []
    model = (config or {}).get("model") or {}
    init_args = model.get("init_args") or model  # subclass mode nests them
    missing = []
    for key, resolve in (("pretrained_model", resolve_pretrained), ("pretrained_vae", resolve_vae)):
        name = init_args.get(key)
        if not isinstance(name, str) or registry.is_named("models", name):
            continue  # unset, or a registered name (built here)
        try:
            resolve(name)
        except ModelUnavailableError as error:
            missing.append(error)
        except ConfigError:
            pass  # a bad value: reported by itself once the downloads are in place
    return missing


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

    # Import every estimator, reward and module before the parser is built, so that `--help`
    # lists them as known subclasses of --model.estimator, --model.reward and --model.
    import draft_lightning.baselines.ddpo  # noqa: F401
    import draft_lightning.estimators  # noqa: F401
    import draft_lightning.module  # noqa: F401
    import draft_lightning.rewards  # noqa: F401
    from draft_lightning.base_module import RewardFineTuningModule
    from draft_lightning.data import PromptDataModule

    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["plan"]:  # not a Lightning subcommand: one step planned, nothing run
            from draft_lightning.planning.command import main as plan

            plan(argv[1:])
            return
        _cli_class()(
            RewardFineTuningModule,
            PromptDataModule,
            # DraftModule (the default, see add_arguments_to_parser) or DDPOModule.
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ConfigError, ModelUnavailableError, ArgumentError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
