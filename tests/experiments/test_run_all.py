"""`make experiments` end to end at smoke size (tiny random model, every run of the plan, two
seeds), so the experiment driver, its claims and its report cannot rot between full runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(out: Path, figures: Path, cache: Path, *options: str) -> subprocess.CompletedProcess:
    """One thread: two OpenMP threads beside other processes on 2 cores run far slower."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run_all",
            "--smoke",
            "--out",
            str(out),
            "--figures",
            str(figures),
            "--cache",
            str(cache),
            *options,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def verdict_rows(doc: str) -> list[str]:
    table = doc.split("## Verdicts")[1].split("### The registered rules")[0]
    return [line for line in table.splitlines() if line.startswith("| ") and "**" in line]


def test_every_part_runs_and_the_report_judges_every_claim(tmp_path):
    out, figures, cache = tmp_path / "experiments.md", tmp_path / "figures", tmp_path / "cache"
    # One part first: the others' claims say which part they need.
    result = run_smoke(out, figures, cache, "--part", "efficiency")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = verdict_rows(out.read_text())
    assert len(rows) == 10, rows
    not_run = [row for row in rows if "**not run**" in row]
    assert len(not_run) == 6 and all("make experiments-" in row for row in not_run), not_run
    assert "make experiments-chain" in not_run[0] and "make experiments-ddpo" in not_run[-1]
    doc = out.read_text()
    assert "DDPO's sweep (2 of 2 runs to run)" in doc
    # Each part's runs and time: 6 efficiency runs; 14 chain runs (DRaFT-1 at T=4 is the
    # efficiency part's) and 4 gradient norms; 2 sweep runs, then control and main per seed.
    assert "efficiency (`make experiments-efficiency`) 6 of 6 cached" in doc
    assert "chain (`make experiments-chain`) 0 of 18 cached, 0.0 h" in doc
    assert "ddpo (`make experiments-ddpo`) 0 of 6 cached, 0.0 h" in doc

    result = run_smoke(out, figures, cache)  # the rest; the efficiency runs come from the cache
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DRaFT-1, T=4 seed 0" not in result.stdout  # cached, not trained again
    # 14 chain runs (DRaFT-1 at T=4 was cached), 4 gradient-norm measurements, 6 DDPO runs.
    assert "(24 runs trained now)" in result.stderr, result.stderr[-2000:]
    doc = out.read_text()
    rows = verdict_rows(doc)
    assert len(rows) == 10 and not any("not run" in row for row in rows), rows
    assert all(
        any(f"**{v}**" in row for v in ("reproduced", "not reproduced", "inconclusive"))
        for row in rows
    ), rows
    assert "partly" not in doc
    # The registered rules are quoted, and the provenance names commits and the machine.
    quoted = doc.split("### The registered rules")[1].split("\n## ")[0]
    assert [f"- **Claim {n}.**" in quoted for n in range(1, 7)] == [True] * 6
    assert "Code: commit" in doc and "CPU cores" in doc
    for group in ("DRaFT-1, T=4", "full DRaFT, T=6", "DRaFT+ (kl 0.01), T=4", "DDPO (lr 0.01"):
        assert f"| {group}" in doc, group
    assert "red control, T=4 |" in doc
    # The renderer's reading needs the toy world's model (tests/experiments/test_ground_truth).
    assert "distance to a clean shape" not in doc  # (the notes may mention the section)
    assert "Not run yet: nothing" in doc
    assert "chain (`make experiments-chain`) 18 of 18 cached" in doc
    assert "ddpo (`make experiments-ddpo`) 6 of 6 cached" in doc
    pngs = sorted(p.name for p in figures.glob("*.png"))
    expected = {
        "efficiency.png",
        "chain_T4.png",
        "chain_T6.png",
        "gradient_norm_vs_k.png",
        "ddpo_sweep.png",
        "ddpo_vs_draft.png",
        "ddpo_control.png",
        "diversity.png",
        "samples.png",
        "samples_red_control.png",
    }
    assert set(pngs) == expected, pngs
    assert all((figures / p).stat().st_size > 3000 for p in pngs)
    for png in expected:
        assert f"figures/{png})" in doc, png


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--seeds", "0,x", "--seeds: '0,x' is not a comma-separated list of integers"),
        ("--seeds", "3", "--seeds: '3': give at least two seeds, each >= 0"),
        ("--part", "fast", "--part: invalid choice: 'fast'"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_anything_runs(tmp_path, option, value, message):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run_all",
            "--smoke",
            option,
            value,
            "--out",
            str(tmp_path / "doc.md"),
            "--cache",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "doc.md").exists() and not (tmp_path / "cache").exists()


def test_a_run_key_holds_its_spec_and_the_shared_settings_only():
    from dataclasses import replace

    from experiments.run_all import Cache, spec_key
    from experiments.settings import RunSpec, smoke

    settings = smoke()
    cache = Cache(Path("unused"), settings)
    spec = RunSpec("DRaFT-1", 0, num_steps=4, budget=2)
    key = cache.key("train", spec_key(spec))
    # A budget of another experiment (DDPO's) does not invalidate this run ...
    assert (
        Cache(Path("unused"), replace(settings, ddpo_batches=99)).key("train", spec_key(spec))
        == key
    )
    # ... the shared learning rate and the run's own budget do.
    assert Cache(Path("unused"), replace(settings, lr=0.5)).key("train", spec_key(spec)) != key
    assert cache.key("train", spec_key(replace(spec, budget=3))) != key


def test_runs_started_before_the_registration_are_not_confirmatory(monkeypatch):
    from experiments import report

    monkeypatch.setattr(report, "registration", lambda: ("abc1234", 1000.0))
    run = {"commit": "def5678", "started": 2000.0, "wall_seconds": 60.0}
    everything = {"groups": {"x": [run, dict(run)]}, "norms": {}, "sweep": {}}
    assert "every run below started after it" in report.provenance(everything)[0]
    everything["groups"]["x"][1]["started"] = 500.0
    assert "1 runs started before it: not confirmatory" in report.provenance(everything)[0]
    monkeypatch.setattr(report, "registration", lambda: None)
    assert "no result below is confirmatory" in report.provenance(everything)[0]


def test_a_run_key_names_model_folders_by_their_weights_not_their_place(tmp_path):
    from dataclasses import replace

    from safetensors.torch import save_file

    from experiments.run_all import Cache, spec_key
    from experiments.settings import ExperimentSettings, RunSpec

    def folder(name: str, value: float) -> str:
        path = tmp_path / name / "unet"
        path.mkdir(parents=True)
        save_file({"w": torch.full((2,), value)}, str(path / "model.safetensors"))
        return str(tmp_path / name)

    spec = RunSpec("DRaFT-1", 0)
    here = ExperimentSettings(pretrained_model=folder("a", 1.0), classifier=folder("c", 2.0))
    moved = replace(here, pretrained_model=folder("b", 1.0))  # a copy elsewhere
    retrained = replace(here, pretrained_model=folder("d", 3.0))
    key = Cache(tmp_path, here).key("train", spec_key(spec))
    assert Cache(tmp_path, moved).key("train", spec_key(spec)) == key
    assert Cache(tmp_path, retrained).key("train", spec_key(spec)) != key


def test_a_signal_stops_the_parts_in_one_line_with_its_exit_status(tmp_path, monkeypatch, capsys):
    """SIGTERM between two runs' trainings (here: as a part starts) stops `make experiments`
    with 143 and one line, never exit 0 (Lightning's own SIGTERM handling exits 0 without a
    checkpoint); the runs finished before it stay cached."""
    import os
    import signal
    import time

    from experiments import run_all
    from experiments.settings import smoke

    cache = run_all.Cache(tmp_path / "cache", smoke())
    cache.ran.append("DRaFT-1, T=4 seed 0")

    def signalled_part(part, settings, cache):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("the signal was not handled")

    monkeypatch.setattr(run_all, "run_part", signalled_part)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        run_all.train_parts(("chain",), smoke(), cache)
    assert stopped.value.code == 143
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM: 1 runs finished"), lines
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_one_process_at_a_time_trains_a_run(tmp_path, capsys):
    """Parts run side by side share runs: a run another process holds is skipped, not
    trained twice into the same checkpoint folder; the lock goes with its holder."""
    from experiments.run_all import Cache
    from experiments.settings import smoke

    cache = Cache(tmp_path / "cache", smoke())
    what = {"run": 1}
    held = cache.claim("train", what)  # another process's lock (flock: per open file)
    assert held is not None

    def must_not_run(partial):
        raise AssertionError("trained while another process holds it")

    assert cache.get_or_run("train", what, must_not_run, "DRaFT-1, T=4 seed 0") is None
    assert "DRaFT-1, T=4 seed 0: another process is training it; skipped" in capsys.readouterr().out
    held.close()  # that process ended
    result = cache.get_or_run("train", what, lambda partial: {"value": 1}, "DRaFT-1, T=4 seed 0")
    assert result == {"value": 1} and cache.get("train", what) == {"value": 1}
    assert not cache.partial("train", what).with_suffix(".lock").exists()
