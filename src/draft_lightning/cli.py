"""The `lightning` and `draft-lightning` commands: one LightningCLI over DraftModule and
PromptDataModule (fit, validate, test, predict).

A refused configuration prints exactly one line, `error: <message>`, and exits with status 2:
a bad value (ConfigError), weights that cannot be found (ModelUnavailableError), a Trainer
setting Lightning refuses, or a value jsonargparse cannot parse (without its usage dump).
So does a run the non-finite guard stopped. A run stopped by SIGTERM or SIGINT, at any point
of the command, prints one line saying how to resume and exits 143 or 130
(training/stop_signals.py). `fit --ckpt_path` of a complete run says there is nothing left
to do and exits 0. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import re
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
                resume_last(config, log_on=subcommand in (None, "fit"))
            if config is not None:
                check_optimizer(config)
                check_lora_formats(config)
                check_trainer(config)
            if config is not None and config.get("ckpt_path"):
                checkpoint = check_checkpoint(str(config["ckpt_path"]), config)
                if subcommand in (None, "fit") and checkpoint is not None:
                    check_work_left(str(config["ckpt_path"]), checkpoint, config)
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
            except MisconfigurationException as error:  # a callback's own check, e.g.
                refused = True  # checkpoint.every_n_train_steps=-1
                raise ConfigError(str(error)) from error
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

            from draft_lightning.training.before_after import BeforeAfter
            from draft_lightning.training.best_checkpoint import BestCheckpoint
            from draft_lightning.training.hacking_guard import GUARDED_TAG, HackingGuard
            from draft_lightning.training.image_writer import ImageWriter
            from draft_lightning.training.lora_export import LoraExport
            from draft_lightning.training.monitoring import RunMonitor
            from draft_lightning.training.nonfinite_guard import NonFiniteGuard
            from draft_lightning.training.pending_validation import PendingValidation
            from draft_lightning.training.run_summary import RunSummary
            from draft_lightning.training.slurm import SlurmRequeue
            from draft_lightning.training.stop_signals import StopOnSignal

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
            # Chosen by the training reward among the evaluations the hacking guard did not
            # flag; `best_checkpoint.monitor: val/reward` is the plain rule.
            parser.add_lightning_class_args(BestCheckpoint, "best_checkpoint")
            parser.set_defaults(
                {
                    "best_checkpoint.monitor": GUARDED_TAG,
                    "best_checkpoint.mode": "max",
                    "best_checkpoint.filename": "best-step={step}-reward={val/reward:.4f}",
                    "best_checkpoint.auto_insert_metric_name": False,
                }
            )
            # Lightning's own docstring ends mid-sentence in --help; say what each one is for.
            titles = {
                "checkpoint": "last.ckpt every N steps, for resuming",
                "best_checkpoint": "The best checkpoint among those not flagged as hacking",
            }
            for key, title in titles.items():
                parser.groups[key].title = f"{title} (Lightning's ModelCheckpoint)"
            parser.add_lightning_class_args(LoraExport, "lora_export")
            parser.add_lightning_class_args(NonFiniteGuard, "nonfinite_guard")
            parser.add_lightning_class_args(RunMonitor, "monitor")
            parser.add_lightning_class_args(ImageWriter, "predictions")
            parser.add_lightning_class_args(BeforeAfter, "comparison")
            parser.add_lightning_class_args(RunSummary, "run_summary")
            parser.add_lightning_class_args(HackingGuard, "hacking_guard")
            parser.add_lightning_class_args(SlurmRequeue, "slurm_requeue")
            parser.add_lightning_class_args(StopOnSignal, "stop_signals")
            parser.add_lightning_class_args(PendingValidation, "pending_validation")

        def instantiate_trainer(self, **kwargs):
            from lightning.pytorch.callbacks import ProgressBar
            from lightning.pytorch.plugins.io import CheckpointIO

            from draft_lightning.training.checkpoint_io import AtomicCheckpointIO
            from draft_lightning.training.progress import StepProgressBar

            configured = self._get(self.config_init, "trainer", default={}).get("plugins")
            plugins = kwargs.get("plugins", configured) or []
            plugins = plugins if isinstance(plugins, list) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                # Atomic checkpoint files in every run, whatever plugins a config lists.
                kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
            trainer_config = self._get(self.config_init, "trainer", default={})
            callbacks = kwargs.get("callbacks", trainer_config.get("callbacks")) or []
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            wanted = trainer_config.get("enable_progress_bar") is not False
            if wanted and not any(isinstance(c, ProgressBar) for c in callbacks):
                # Steps of max_steps with the reward, no "Epoch 0/-2" or v_num (progress.py).
                kwargs["callbacks"] = [*callbacks, StepProgressBar()]
            try:
                return super().instantiate_trainer(**kwargs)
            except MisconfigurationException as error:
                # Trainer settings Lightning refuses, e.g. accelerator: gpu without a GPU.
                raise ConfigError(f"trainer: {error}") from error

    return DraftCLI


def resume_last(config, log_on: bool = True) -> None:
    """`--ckpt_path last`: the newest last.ckpt among this run's TensorBoard versions, and
    (`log_on`, for fit) log on into that version. Lightning alone looks only in the new
    version's folder, so a run preempted under versioned logs would start again from zero.
    validate, test and predict log into a version of their own: the training run's
    config.yaml and hparams stay as they were. Without any last.ckpt, Lightning's own
    handling remains (a warning, then a fresh start), which suits requeue scripts that
    always pass --ckpt_path last."""
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
        if log_on:
            args["version"] = found[-1].parent.parent.name


class NothingToDo(Exception):
    """`fit --ckpt_path` of a run that is complete: said in one line, exit status 0."""


def check_work_left(path: str, checkpoint: dict, config) -> None:
    """A run resumed from a checkpoint at `trainer.max_steps`, with no validation owed, has
    nothing to do: say so instead of logging an empty process into the finished run (a
    requeue script that always passes `--ckpt_path last` ends here once the run is done)."""
    max_steps = (config.get("trainer") or {}).get("max_steps")
    step = checkpoint.get("global_step")
    if not isinstance(max_steps, int) or max_steps < 0 or not isinstance(step, int):
        return
    owed = [
        state.get("validation_owed_at_step")
        for name, state in (checkpoint.get("callbacks") or {}).items()
        if "PendingValidation" in str(name) and isinstance(state, dict)
    ]
    if step >= max_steps and not any(s is not None for s in owed):
        raise NothingToDo(
            f"nothing left to do: {path} is at step {step} and trainer.max_steps={max_steps}; "
            "the run is complete (raise --trainer.max_steps to train further)"
        )


def check_checkpoint(path: str, config=None) -> dict | None:
    """Refuse a missing or unreadable --ckpt_path, or one whose LoRA rank is not the
    config's, in one line before any model loads, and return what it read (else Lightning
    fails with a traceback after the weights are in memory, and the full check of every
    weight's shape, check_trained_weights, runs only then). Lightning's named checkpoints
    ("last" with none found, "best", "hpc") are left to it."""
    from pathlib import Path

    import torch

    if path in ("last", "best", "hpc", "registry"):
        return None
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
    rank = (_model_args(config).get("lora") or {}).get("rank", 8)  # LoraSettings' default
    found = sorted(
        {int(v.shape[0]) for k, v in checkpoint.get("state_dict", {}).items() if ".lora_A." in k}
    )
    if found and found != [rank]:
        raise ConfigError(
            f"ckpt_path={path!r} holds a LoRA adapter of rank {', '.join(map(str, found))}; "
            f"this config has model.lora.rank={rank}: resume with the lora settings it was "
            "trained with"
        )
    return checkpoint


# What torch's optimisers say about a bad value -> (the key, what is allowed).
OPTIMIZER_VALUES = {
    "learning rate": ("lr", "a number >= 0"),
    "epsilon": ("eps", "a number >= 0"),
    "beta parameter": ("betas", "two numbers in [0, 1)"),
    "weight_decay": ("weight_decay", "a number >= 0"),
    "momentum": ("momentum", "a number >= 0"),
}


def check_optimizer(config) -> None:
    """Build the configured optimiser over one dummy weight, so that a value it refuses (a
    negative learning rate, a beta of 1) is one line before any model loads, not a
    traceback once the weights are in memory and the version folder exists."""
    import importlib

    import torch
    from jsonargparse import Namespace

    optimizer = _model_args(config).get("optimizer")
    if not isinstance(optimizer, dict) or not optimizer.get("class_path"):
        return
    init_args = optimizer.get("init_args") or {}
    kwargs = init_args.as_dict() if isinstance(init_args, Namespace) else dict(init_args)
    try:
        module, _, name = optimizer["class_path"].rpartition(".")
        factory = getattr(importlib.import_module(module), name)
        factory([torch.zeros(1, requires_grad=True)], **kwargs)
    except ValueError as error:
        message = " ".join(str(error).split())
        for phrase, (key, allowed) in OPTIMIZER_VALUES.items():
            if phrase in message and key in kwargs:
                raise ConfigError(
                    f"model.optimizer.init_args.{key}={kwargs[key]!r}: must be {allowed} "
                    f"({name}: {message})"
                ) from None
    except Exception:  # noqa: BLE001 - an optimiser that needs real weights: the run will tell
        pass


def check_trainer(config) -> None:
    """Trainer values Lightning takes without a check and fails on later with a traceback
    (accumulate_grad_batches=0: a division by zero at the first step, the version folder
    made)."""
    accumulate = (config.get("trainer") or {}).get("accumulate_grad_batches")
    if isinstance(accumulate, int) and accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate}: must be an integer >= 1")


def check_lora_formats(config) -> None:
    """Refuse `lora_export.formats: [kohya]` for a family without a kohya layout here, before
    the logger makes the run's folder, wherever the family is known without loading or
    downloading anything: a registered name, a local folder, a hub id already in the cache.
    (Otherwise LoraExport.setup refuses it once the model is built.)"""
    from draft_lightning.training.lora_export import check_formats

    formats = (config.get("lora_export") or {}).get("formats") or []
    name = _model_args(config).get("pretrained_model")
    if "kohya" in formats and isinstance(name, str):
        family = family_if_known(name)
        if family is not None:
            check_formats(formats, family)


def family_if_known(name: str):
    """The model family of `pretrained_model` if it can be read without a download, else None."""
    from pathlib import Path

    from draft_lightning import registry
    from draft_lightning.models.families import family_of

    if registry.is_named("models", name):
        return family_of(registry.resolve("models", name, "model.pretrained_model"))
    folder = Path(name).expanduser()
    if folder.is_dir():
        return family_of(folder)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(name, "model_index.json")
        if isinstance(index, str):
            return family_of(Path(index).parent)
    return None


def _model_args(config) -> dict:
    """The model's init arguments as plain dicts (subclass mode nests them in init_args)."""
    from jsonargparse import Namespace

    model = (config or {}).get("model") or {}
    if isinstance(model, Namespace):
        model = model.as_dict()
    return model.get("init_args") or model


def missing_model_downloads(config) -> list[ModelUnavailableError]:
    """What the model's `pretrained_model` and `pretrained_vae` need that is not here, when
    the hub cannot be reached (online, they download when their turn comes)."""
    from draft_lightning import registry
    from draft_lightning.hub import offline_reason
    from draft_lightning.models.loading import resolve_pretrained, resolve_vae

    if offline_reason() is None:
        return []
    init_args = _model_args(config)
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


# jsonargparse refuses `nan` for a float nested in a class's arguments (`--model.reward.
# init_args.weights '[.nan]'`), or `abc` for a learning rate, with several hundred characters
# of union subtypes that name neither the whole key nor what is allowed.
NUMBER_EXPECTED = re.compile(r"Expected a <class '(int|float)'>")
NONFINITE = re.compile(r"(?<![\w.])-?\.?(nan|inf|infinity)(?!\w)", re.IGNORECASE)
PARSER_KEY = re.compile(r"Parser key \"([^\"]+)\"")
NESTED_ARG = re.compile(r"NestedArg\(key='([^']+)', val=(.+?)\)\s*$", re.MULTILINE)
GIVEN_VALUE = re.compile(r"(?:Got|Given) value: (.+?)\s*$", re.MULTILINE)


def not_a_number_message(message: str) -> str | None:
    """`<key>=<value>: must be a finite number` (or `an integer`, or a list of them) for
    jsonargparse's refusal of a value given where a number goes, or None when the message is
    about something else."""
    expected = set(NUMBER_EXPECTED.findall(message))
    keys = PARSER_KEY.findall(message)
    if not expected or not keys:
        return None
    nested = NESTED_ARG.findall(message)
    if nested:  # the last one printed is the outermost: its key is relative to the first
        inner_key, value = nested[-1]
        key = f"{keys[0]}.{inner_key}"
    else:
        given = GIVEN_VALUE.findall(message)
        if not given:
            return None
        key, value = keys[0], given[-1]
    value = value.strip().strip("'\"").replace("'", "")
    many = value.startswith("[")
    if "float" in expected:
        allowed = "finite numbers" if many else "a finite number"
    else:
        allowed = "integers" if many else "an integer"
    not_finite = " (not NaN or infinity)" if NONFINITE.search(value) else ""
    return f"{key}={value}: must be {allowed}{not_finite}"


LITERAL = re.compile(r"typing\.Literal\[([^\]]*)\]")


def not_allowed_message(message: str) -> str | None:
    """`<key>=<value>: must be one of <choices>` for jsonargparse's refusal of a value outside
    a fixed set (`lora_export.formats: [ckpt]`, `trainer.precision: 17`), or None."""
    if "Expected a typing.Literal[" not in message:
        return None
    keys = PARSER_KEY.findall(message)
    given = GIVEN_VALUE.findall(message)
    nested = NESTED_ARG.findall(message)
    if not keys or not (given or nested):
        return None
    key, value = (f"{keys[0]}.{nested[-1][0]}", nested[-1][1]) if nested else (keys[0], given[-1])
    choices = []
    for options in LITERAL.findall(message):
        for option in options.split(","):
            option = option.strip().strip("'\"")
            if option and option not in choices:
                choices.append(option)
    value = value.strip().strip("'\"").replace("'", "")
    return f"{key}={value}: must be one of {', '.join(choices)}"


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
    from draft_lightning.training.nonfinite_guard import NonFiniteError
    from draft_lightning.training.quiet import quiet_lightning_noise
    from draft_lightning.training.run_config import SaveRunConfig
    from draft_lightning.training.stop_signals import CommandSignals, RunInterrupted
    from draft_lightning.unknown_class import unknown_class_message

    quiet_lightning_noise()  # what a user cannot act on (training/quiet.py says which)

    argv = sys.argv[1:] if args is None else list(args)
    try:
        with CommandSignals():  # a signal outside fit's steps: one line too (stop_signals.py)
            if argv[:1] == ["plan"]:  # not a Lightning subcommand: one step planned, nothing run
                from draft_lightning.planning.command import main as plan

                plan(argv[1:], _cli_class())
                return
            _cli_class()(
                RewardFineTuningModule,
                PromptDataModule,
                # DraftModule (the default, see add_arguments_to_parser) or DDPOModule.
                subclass_mode_model=True,
                save_config_callback=SaveRunConfig,  # when the work starts, beside an earlier one
                save_config_kwargs={"overwrite": True},
                args=args,
            )
    except (ConfigError, ModelUnavailableError, ArgumentError, NonFiniteError) as error:
        message = " ".join(str(error).split())
        if isinstance(error, ArgumentError):
            raw = str(error)  # the layout of the message matters to these
            short = not_a_number_message(raw) or not_allowed_message(raw)
            message = short or unknown_class_message(message) or message
        print(f"error: {message}", file=sys.stderr)  # one line
        raise SystemExit(2) from None
    except NothingToDo as done:
        print(str(done), file=sys.stderr)
    except RunInterrupted as stop:
        argv = sys.argv if args is None else ["lightning", *args]
        print(interrupted_line(stop, argv), file=sys.stderr)  # the run's last line
        raise SystemExit(stop.exit_status) from None


def interrupted_line(stop, argv: list[str]) -> str:
    """What happened and the command that resumes, e.g. `stopped by SIGTERM at step 7:
    checkpoint runs/x/version_0/checkpoints/last.ckpt; resume with: lightning fit ...
    --ckpt_path last`."""
    import shlex
    from pathlib import Path

    name = stop.args[0]
    command = [Path(argv[0]).name]
    skip = False
    for arg in argv[1:]:  # the same command, without any earlier --ckpt_path
        if skip or arg.startswith("--ckpt_path="):
            skip = False
            continue
        skip = arg == "--ckpt_path"
        if not skip:
            command.append(arg)
    resume = shlex.join([*command, "--ckpt_path", "last"])
    if stop.when == "start":
        subcommand = argv[1] if len(argv) > 1 else ""
        if subcommand != "fit":  # validate, test, predict, plan: nothing to resume
            return f"stopped by {name} before {shlex.join(command[:2])} finished; run it again"
        return (
            f"stopped by {name} before training started: nothing to resume; run the command again"
        )
    if stop.when == "second":
        return (
            f"stopped by a second {name} before the step ended: no new checkpoint (the last "
            f"one saved is intact); resume with: {resume}"
        )
    if stop.when == "resumed":
        return (
            f"stopped by {name} before the first step after resuming at step {stop.step}: the "
            f"checkpoint it resumed from is intact; resume with: "
            f"{shlex.join([command[0], *argv[1:]])}"
        )
    target = "last" if stop.found_by_last else str(stop.checkpoint)
    if stop.when == "end":
        written = f"checkpoint {stop.checkpoint}" if stop.checkpoint else "no checkpoint kept"
        return (
            f"stopped by {name} after the last step ({stop.step}), once the run was complete: "
            f"{written}; nothing left to resume"
        )
    return (
        f"stopped by {name} at step {stop.step}: checkpoint {stop.checkpoint}; resume with: "
        f"{shlex.join([*command, '--ckpt_path', target])}"
    )


if __name__ == "__main__":
    main()
