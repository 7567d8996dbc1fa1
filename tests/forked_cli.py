"""A fork server for the `lightning` console script: imports the CLI's modules once, then runs
each command it is sent in a child forked from that state. Started by lightning_runs.run_command;
not a test.

Why: a `lightning fit` subprocess spends 5-10 s importing torch, lightning, diffusers and
transformers before it reads its first argument, and the suite starts dozens of them. A child
forked after those imports (and before any torch op has run, so no thread pool is copied) is
a fresh process for everything else: it runs what the console script runs (`sys.exit(main())`
with the same sys.argv), in its own working directory, with stdin, stdout and stderr of its
own, and ends the way an interpreter ends (threads joined, atexit handlers, streams flushed,
exit status from SystemExit, a traceback and status 1 from an uncaught exception, death by
SIGINT from an uncaught KeyboardInterrupt). The environment is the command's: the client
only sends a command to a server started with the same one (see lightning_runs.PER_COMMAND
for the one variable that may differ), since some are read as modules import.

Protocol: one JSON request per line on stdin {"argv": [...], "cwd": ..., "env": {...},
"timeout": s|null}; one JSON reply per line {"returncode": int|null, "stdout": hex,
"stderr": hex} (returncode null: killed at the timeout). A first line {"ready": true} says
the imports are done.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def exit_status(stop: SystemExit) -> int:
    """What the interpreter makes of an uncaught SystemExit (Python/pythonrun.c)."""
    code = stop.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def finish_like_the_interpreter(status: int, sigint: bool = False) -> None:
    """Interpreter shutdown as Py_FinalizeEx does it, then the exit status."""
    import atexit
    import threading

    try:
        threading._shutdown()  # join non-daemon threads, as a normal exit waits for them
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a stream already closed
                stream.flush()
        if sigint:  # an uncaught KeyboardInterrupt: the process dies of SIGINT (Python 3.8+)
            import signal

            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(status)


def child(argv: list[str], cwd: str, env: dict, out: int, err: int, replies: int) -> None:
    """In the forked child: become the console-script process and never return."""
    import random

    random.seed()  # a fresh interpreter seeds from the OS, not from its parent's state
    os.environ.clear()  # the command's own (differing from the server's at most in
    os.environ.update(env)  # variables nothing reads at import, see lightning_runs)
    os.chdir(cwd)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (stdin, out, err, replies):  # a fresh process has none of the server's files
        os.close(fd)
    sys.argv = [argv[0].removesuffix(".exe"), *argv[1:]]  # as the generated script does
    try:
        from draft_lightning.cli import main

        sys.exit(main())
    except SystemExit as stop:
        finish_like_the_interpreter(exit_status(stop))
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        finish_like_the_interpreter(1, sigint=True)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        finish_like_the_interpreter(1)


def run(request: dict, replies: int) -> dict:
    """Fork one child for the request, wait for it (killing it at the timeout), reply."""
    import signal

    # Plain temporary files, not a TemporaryDirectory: its finalizer would run in the
    # child's atexit and delete the files the child writes.
    files = [tempfile.mkstemp(prefix=f"forked-cli-{name}-") for name in ("out", "err")]
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            out, err = files[0][0], files[1][0]
            child(request["argv"], request["cwd"], request["env"], out, err, replies)
        for fd, _ in files:
            os.close(fd)
        timeout = request.get("timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        returncode = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                returncode = os.waitstatus_to_exitcode(status)
                break
            if deadline is not None and time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)  # as subprocess.run does at its timeout
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        stdout, stderr = (Path(path).read_bytes().hex() for _, path in files)
    finally:
        for _, path in files:
            Path(path).unlink(missing_ok=True)
    return {"returncode": returncode, "stdout": stdout, "stderr": stderr}


def serve() -> None:
    # The console script's directory leads sys.path, as it does when the script runs (not
    # this file's folder, tests/, which a real run only sees through PYTHONPATH).
    sys.path[0] = str(Path(sys.executable).parent)
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed while importing must not reach the replies
    # What the console script imports before it reads its arguments: main's own imports.
    import lightning.pytorch.cli  # noqa: F401

    import draft_lightning.baselines.ddpo  # noqa: F401
    import draft_lightning.cli  # noqa: F401
    import draft_lightning.estimators  # noqa: F401
    import draft_lightning.module  # noqa: F401
    import draft_lightning.rewards  # noqa: F401
    from draft_lightning.base_module import RewardFineTuningModule  # noqa: F401
    from draft_lightning.data import PromptDataModule  # noqa: F401

    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin:
        replies.write(json.dumps(run(json.loads(line), replies.fileno())) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
