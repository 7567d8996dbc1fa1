"""Bad prompt input through the real `lightning fit` command: one line on stderr, no traceback,
a non-zero exit status, before any training step."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from lightning_runs import run_command

ROOT = Path(__file__).resolve().parents[2]
LIGHTNING = Path(sys.executable).with_name("lightning")

CASES = {
    "missing-file": ("missing.txt", None, "is neither a built-in prompt set"),
    "empty-file": ("empty.txt", b"", "is an empty file"),
    "blank-lines": ("blank.txt", b"\n  \n\t\n", "contains no prompts (only blank lines"),
    "invalid-utf8": ("bad.txt", b"a cat\na dog\ncaf\xe9\n", "line 3 is not valid UTF-8"),
    "json-no-field": (
        "p.jsonl",
        b'{"prompt": "a cat"}\n{"caption": "a dog"}\n',
        "line 2 has no field 'prompt'",
    ),
    "glob-no-match": ("prompts/*.jsonl", None, "is a glob that matches no files"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_prompt_input_is_one_line_through_the_cli(tmp_path, case):
    name, content, expected = CASES[case]
    if content is not None:
        (tmp_path / name).write_bytes(content)
    command = [
        str(LIGHTNING),
        "fit",
        "--config",
        str(ROOT / "configs" / "draft_k.yaml"),
        "--config",
        str(ROOT / "configs" / "cpu_tiny.yaml"),
        "--data.train_prompts",
        name,
        "--trainer.max_steps",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # In its own process, forked after the imports (lightning_runs.run_command).
    result = run_command(command, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: train_prompts={name!r}") and expected in lines[0], lines
    assert not (tmp_path / "runs").exists()  # stopped before the trainer started
