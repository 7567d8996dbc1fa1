"""`make experiments` end to end at smoke size (tiny random model, every method, one seed),
so the experiment driver, its claims and its report cannot rot between full runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_smoke(out: Path, figures: Path, cache: Path) -> subprocess.CompletedProcess:
    """One thread: two OpenMP threads beside other processes on 2 cores run far slower."""
    return subprocess.run(
        [sys.executable, "-m", "experiments.run_all", "--smoke", "--out", str(out),
         "--figures", str(figures), "--cache", str(cache)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_every_experiment_runs_and_the_report_judges_every_claim(tmp_path):
    out, figures = tmp_path / "experiments.md", tmp_path / "figures"
    result = run_smoke(out, figures, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    doc = out.read_text()
    claims = doc.split("## The claims")[1].split("## Results")[0]
    rows = [line for line in claims.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == 4, claims  # every claim judged, none "not run"
    assert all("not run" not in row for row in rows), rows
    for method in (
        "DRaFT-1",
        "DRaFT-LV (n=2)",
        "full DRaFT",
        "ReFL",
        "DDPO",
        "DRaFT-LV + DRaFT+",
        "DDPO, long run",
    ):
        assert f"| {method}" in doc, method
    pngs = sorted(p.name for p in figures.glob("*.png"))
    assert len(pngs) == 6 and all((figures / p).stat().st_size > 5000 for p in pngs), pngs
    # Finished runs are cached: a second invocation trains nothing.
    again = run_smoke(out, figures, tmp_path / "cache")
    assert again.returncode == 0 and " s\n" not in again.stdout, again.stdout


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--seeds", "0,x", "--seeds: '0,x' is not a comma-separated list of integers"),
        ("--ddpo-long-batches", "1.5", "'1.5' is not a number of batches (an integer >= 0)"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_anything_runs(tmp_path, option, value, message):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run_all", "--smoke", option, value,
         "--out", str(tmp_path / "doc.md"), "--cache", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "doc.md").exists() and not (tmp_path / "cache").exists()


def test_the_long_run_settings_stay_out_of_every_other_runs_cache_key():
    from dataclasses import replace

    from experiments.run_all import cache_key
    from experiments.settings import smoke

    settings = smoke()
    key = cache_key("train", "DRaFT-1", 0, settings)
    longer = replace(settings, ddpo_long_batches=99, ddpo_long_seed=3, ddpo_long_val_every=7)
    assert cache_key("train", "DRaFT-1", 0, longer) == key
    assert cache_key("train", "DRaFT-1", 0, replace(settings, lr=0.5)) != key
