"""`lightning plan` as a user meets it: bad input is one `error:` line, exit status 2; a
good plan prints no warnings."""

from __future__ import annotations

import pytest

from draft_lightning.cli import main
from draft_lightning.planning.weightless import architecture_folder, known_architectures


def refused(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        main(["plan", *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("memory", ["24", "lots", "0GB"])
def test_a_bad_memory_size_is_one_error_line(capsys, memory):
    line = refused(capsys, ["--config", "configs/draft_lv.yaml", "--memory", memory])
    assert repr(memory) in line and "GiB" in line


def test_plan_needs_a_config(capsys):
    assert "--config" in refused(capsys, ["--memory", "24GiB"])


def test_an_unknown_hub_model_names_the_shipped_ones(capsys):
    line = refused(
        capsys,
        ["--config", "configs/draft_lv.yaml", "--model.pretrained_model", "someone/unknown"],
    )
    assert "someone/unknown" in line and "CompVis/stable-diffusion-v1-4" in line


def test_every_shipped_config_names_an_architecture_that_ships():
    from pathlib import Path

    import yaml

    for config in Path("configs").glob("*.yaml"):
        model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
        name = (model.get("init_args") or model).get("pretrained_model")
        if isinstance(name, str) and ":" not in name:
            assert name in known_architectures(), config
            assert (architecture_folder(name) / "model_index.json").is_file()


def test_the_plan_prints_no_warnings():
    """As a user runs it: the plan on stdout, and on stderr only the Trainer's device and
    seed lines (no LightningCLI args warning, no self.log-without-a-trainer warning, no
    diffusers fp32 notice with nothing in it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "lightning"),
            "plan",
            *["--config", "configs/draft_lv.yaml", "--config", "configs/cpu_tiny.yaml"],
            *["--model.sampling.num_steps", "2", "--memory", "1GiB"],
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("plan: ") and "memory 1.0 GiB: batch 2 fits" in run.stdout
    noise = [
        line
        for line in run.stderr.splitlines()
        if not line.startswith(("GPU available:", "TPU available:", "Seed set to"))
    ]
    assert noise == []
