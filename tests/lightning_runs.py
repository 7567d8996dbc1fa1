"""Running the installed `lightning` console script on the tiny model, as a user would."""

from __future__ import annotations

import atexit
import csv
import json
import locale
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Few sampling steps, no validation, metrics as CSV in the run's working folder.
QUICK = [
    "--model.sampling.num_steps", "4",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.limit_val_batches", "0",
    "--trainer.enable_progress_bar", "false",
    "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
    "--trainer.logger.init_args.save_dir", "logs",
]  # fmt: skip


def lightning_fit(
    configs: list[Path], args: list[str], cwd: Path, pythonpath: Path | None = None
) -> subprocess.CompletedProcess:
    """`lightning fit --config ... <args>` in `cwd`, offline, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    command = [str(Path(sys.executable).parent / "lightning"), "fit"]
    for config in configs:
        command += ["--config", str(config)]
    return run_command([*command, *QUICK, *args], cwd=cwd, env=env, timeout=300)


def logged_rows(cwd: Path) -> list[dict[str, str]]:
    """Rows of the run's metrics.csv that carry a training reward."""
    (metrics,) = (cwd / "logs").glob("*/version_0/metrics.csv")
    with open(metrics, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("train/reward")]


def quiet_trainer(max_steps: int):
    """A CPU Trainer for `max_steps` with no logger, checkpoints, progress bar or validation."""
    from lightning.pytorch import Trainer

    return Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


# --- one process's imports for many commands ------------------------------------------------

FORKED_CLI = Path(__file__).with_name("forked_cli.py")
# Console scripts that run `sys.exit(draft_lightning.cli.main())`.
CLI_SCRIPTS = ("lightning", "draft-lightning")
# Fork servers alive at once, one per distinct environment (each holds the imports, ~1 GB).
MAX_SERVERS = 3
_servers: OrderedDict[tuple, subprocess.Popen] = OrderedDict()
_seen: set[tuple] = set()  # environments of earlier commands
# Set by pytest for each test and read by nothing at import: the child gets the command's
# own value, and a server serves every test.
PER_COMMAND = ("PYTEST_CURRENT_TEST",)


def run_command(
    command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """`subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout)` for a one-process command (no DDP ranks of its own): when `command` is
    this venv's `lightning` or `draft-lightning`, it runs in a child of a fork server that
    has already imported the CLI (forked_cli.py says why that is the same run), else as a
    plain subprocess. Same result, exit status, output and timeout behaviour either way."""
    env = dict(os.environ if env is None else env)
    key = tuple(sorted((k, v) for k, v in env.items() if k not in PER_COMMAND))
    if not _runs_the_cli(Path(command[0])) or not _worth_a_server(key):
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    server = _server(key, env)
    request = {"argv": [str(a) for a in command], "cwd": str(cwd), "env": env, "timeout": timeout}
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    line = server.stdout.readline()
    if not line:
        raise RuntimeError(f"the fork server ({FORKED_CLI.name}) died running {command}")
    reply = json.loads(line)
    stdout, stderr = (_decoded(bytes.fromhex(reply[name])) for name in ("stdout", "stderr"))
    if reply["returncode"] is None:
        raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(command, reply["returncode"], stdout, stderr)


def _runs_the_cli(script: Path) -> bool:
    """Whether `script` is this venv's console script for draft_lightning.cli:main."""
    if script.parent != Path(sys.executable).parent or script.name not in CLI_SCRIPTS:
        return False
    return "from draft_lightning.cli import main" in script.read_text(errors="replace")


def _decoded(data: bytes) -> str:
    """As subprocess's text mode decodes a pipe (locale encoding, universal newlines)."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _worth_a_server(key: tuple) -> bool:
    """A server costs what one plain run costs: start one for an environment's second
    command (most tests run theirs several times; one-off environments never pay for it)."""
    if key in _servers or key in _seen:
        return True
    _seen.add(key)
    return False


def _server(key: tuple, env: dict[str, str]) -> subprocess.Popen:
    """The fork server started with exactly `env` (started now if there is none)."""
    server = _servers.get(key)
    if server is not None and server.poll() is None:
        _servers.move_to_end(key)
        return server
    while len(_servers) >= MAX_SERVERS:
        _stop(_servers.popitem(last=False)[1])
    server = subprocess.Popen(
        [sys.executable, str(FORKED_CLI)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    )
    if json.loads(server.stdout.readline() or "{}").get("ready") is not True:
        raise RuntimeError(f"the fork server ({FORKED_CLI.name}) did not start")
    _servers[key] = server
    return server


def _stop(server: subprocess.Popen) -> None:
    server.stdin.close()  # the server ends at the end of its input
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


@atexit.register
def _stop_all() -> None:
    while _servers:
        _stop(_servers.popitem()[1])
