"""The `lightning` / `draft-lightning` console scripts end to end, each run in a process of
its own from a temporary working directory (so `runs/` lands there) on the tiny model.

A fresh subprocess pays 4-6 s of imports (lightning, torch, diffusers) before it does
anything: the `lightning` runs in the test environment are forked from one process that
imported the CLI once (lightning_runs.run_command); `draft-lightning` and the runs with an
environment of their own start the console script itself.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from lightning_runs import run_command

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BIN = Path(sys.executable).parent
SD_REPO = "CompVis/stable-diffusion-v1-4"

ALGORITHMS = ["draft_lv", "draft_k", "draft_full", "alignprop", "refl"]
# Three optimiser steps and no validation, to stay fast.
SHORT_FIT = "--trainer.max_steps 3 --trainer.num_sanity_val_steps 0 --trainer.limit_val_batches 0"
# cpu_tiny samples 10 DDIM steps. 4 are enough for every estimator's own YAML settings except
# ReFL's window of 10 (which must fit in num_steps), so ReFL keeps 10.
FEWER_SAMPLING_STEPS = {algorithm: "--model.sampling.num_steps 4" for algorithm in ALGORITHMS}
FEWER_SAMPLING_STEPS["refl"] = ""

pytestmark = pytest.mark.slow


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    script: str = "lightning",
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    """Run the installed console script (the venv's, next to this interpreter)."""
    forked = env is None and script == "lightning"
    env = dict(os.environ if env is None else env)
    # One intra-op thread: on a busy 2-core machine torch's default two OpenMP threads spin
    # against other processes and a 3-step tiny fit takes 45 s instead of 7 s.
    env.setdefault("OMP_NUM_THREADS", "1")
    if forked:
        return run_command([str(BIN / script), *args], cwd=cwd, env=env, timeout=timeout)
    return subprocess.run(
        [str(BIN / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def overlay(algorithm: str) -> list[str]:
    return [
        "--config",
        str(CONFIGS / f"{algorithm}.yaml"),
        "--config",
        str(CONFIGS / "cpu_tiny.yaml"),
    ]


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_refused(result: subprocess.CompletedProcess, cwd: Path, *expected: str) -> str:
    """Exit status 2, one `error:` line on stderr naming `expected`, no traceback, no run dir."""
    report = describe(result)
    assert result.returncode == 2, report
    assert "Traceback" not in result.stdout + result.stderr, report
    lines = error_lines(result)
    assert len(lines) == 1, report
    line = lines[0]
    assert line.startswith("error: "), report
    for text in expected:
        assert text in line, report
    assert result.stdout.strip() == "", report
    for log_dir in ("runs", "lightning_logs"):
        assert not (cwd / log_dir).exists(), f"refused, yet wrote {sorted(cwd.rglob('*'))}"
    return line


# --- 1. every algorithm trains and logs its reward ------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fit_logs_train_reward(algorithm, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [
        "fit",
        *overlay(algorithm),
        *SHORT_FIT.split(),
        *FEWER_SAMPLING_STEPS[algorithm].split(),
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)

    run_dir = tmp_path / "runs" / algorithm / "version_0"
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file in {run_dir}: {sorted(tmp_path.rglob('*'))}"
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert "train/reward" in tags, tags
    rewards = accumulator.Scalars("train/reward")
    assert [event.step for event in rewards] == [0, 1, 2]  # log_every_n_steps: 1
    assert all(math.isfinite(event.value) for event in rewards), rewards

    # The overlay changed the model and the hardware, not the algorithm.
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    own = yaml.safe_load((CONFIGS / f"{algorithm}.yaml").read_text())
    assert saved["model"]["class_path"] == "draft_lightning.module.DraftModule"
    estimator = saved["model"]["init_args"]["estimator"]
    assert estimator["class_path"] == own["model"]["estimator"]["class_path"]
    for key, value in (own["model"]["estimator"].get("init_args") or {}).items():
        assert estimator["init_args"][key] == value, (key, estimator)
    assert saved["model"]["init_args"]["pretrained_model"] == "tiny:sd"


@pytest.mark.parametrize(
    ("config", "tiny_overlay", "extra", "model"),
    [
        ("sdxl_draft_lv", "cpu_tiny_sdxl", [], "tiny:sdxl"),
        ("sd21_draft_lv", "cpu_tiny", ["--model.pretrained_model", "tiny:sd-v"], "tiny:sd-v"),
    ],
)
def test_sdxl_and_sd2_configs_fit_on_their_tiny_models(
    config, tiny_overlay, extra, model, tmp_path
):
    """The issue's command: `lightning fit --config configs/sdxl_draft_lv.yaml --config
    configs/cpu_tiny_sdxl.yaml --trainer.max_steps 3` (and SD 2.1's on the v-prediction model)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [
        "fit",
        "--config",
        str(CONFIGS / f"{config}.yaml"),
        "--config",
        str(CONFIGS / f"{tiny_overlay}.yaml"),
        *extra,
        "--trainer.max_steps",
        "3",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.limit_val_batches",
        "0",
        "--model.sampling.num_steps",
        "4",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, describe(result)
    run_dir = tmp_path / "runs" / config / "version_0"
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    rewards = accumulator.Scalars("train/reward")
    assert rewards and all(math.isfinite(event.value) for event in rewards), rewards
    assert (run_dir / "lora" / "last" / "pytorch_lora_weights.safetensors").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["pretrained_model"] == model


# --- 2 and 5. help ---------------------------------------------------------------------------


def test_fit_help_documents_estimators_rewards_and_sampling(tmp_path):
    result = run_cli(["fit", "--help"], tmp_path)
    assert result.returncode == 0, describe(result)
    # --model takes DraftModule or a subclass: the models are listed, their options one
    # level down (what README and docs/configs.md tell users to run).
    assert "draft_lightning.baselines.ddpo.DDPOModule" in result.stdout
    assert "--model.help" in result.stdout
    result = run_cli(["fit", "--model.help", "DraftModule"], tmp_path)
    assert result.returncode == 0, describe(result)
    text = result.stdout
    for option in ("--model.estimator", "--model.reward", "--model.sampling", "--model.lora"):
        assert option in text, option
    for estimator in ("Draft", "DraftK", "DraftLV", "RandomTruncation", "ReFL"):
        assert f"draft_lightning.estimators.{estimator}," in text or (
            f"draft_lightning.estimators.{estimator})" in text
        ), f"{estimator} is not listed as a known subclass of --model.estimator"
    for reward in ("Brightness", "Colorfulness", "WeightedSum"):
        assert f"draft_lightning.rewards.{reward}" in text, reward

    if "--model.sampling.num_steps" not in text:
        # While DraftModule types `sampling` as `SamplingSettings | None`, jsonargparse lists
        # its fields only under --model.sampling.help; typed `SamplingSettings` with a
        # SamplingSettings() default, they appear in `fit --help` itself.
        assert "--model.sampling.help" in text
        result = run_cli(["fit", "--model.sampling.help"], tmp_path)  # pragma: no cover
        assert result.returncode == 0, describe(result)
        text = result.stdout
    for option in ("num_steps", "guidance_scale", "eta", "resolution"):
        assert f"--model.sampling.{option}" in text, option
    assert "DDIM sampling steps" in text  # SamplingSettings' own docstring
    assert not (tmp_path / "runs").exists()


def test_help_titles_are_whole_sentences(capsys):
    """Each group in `--help` is titled with the first docstring line of its class: that
    line must be the whole summary, not a sentence cut at its line break."""
    from draft_lightning.cli import main

    for args in (["fit", "--help"], ["fit", "--model.help", "DraftModule"]):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 0
        text = capsys.readouterr().out
        titles = [line for line in text.splitlines() if line and line[0].isupper()
                  and line.endswith(":") and not line.startswith("Help for")]  # fmt: skip
        assert len(titles) >= 2, text
        for title in titles:
            last_word = title[:-1].split()[-1]
            assert last_word not in {"the", "a", "of", "and", "to", "with", "chain", "is"}, title
    for cls in (
        "draft_lightning.module.DraftModule",
        "draft_lightning.baselines.ddpo.DDPOModule",
        "draft_lightning.data.PromptDataModule",
        "draft_lightning.training.lora_export.LoraExport",
        "draft_lightning.training.monitoring.RunMonitor",
        "draft_lightning.training.nonfinite_guard.NonFiniteGuard",
        "draft_lightning.training.image_writer.ImageWriter",
        "draft_lightning.training.run_summary.RunSummary",
        "draft_lightning.training.hacking_guard.HackingGuard",
        "draft_lightning.training.best_checkpoint.BestCheckpoint",
        "draft_lightning.training.before_after.BeforeAfter",
        "draft_lightning.training.progress.StepProgressBar",
        "draft_lightning.toy.judge.ToyJudgeReward",
        "draft_lightning.training.slurm.SlurmRequeue",
        "draft_lightning.estimators.DraftLV",
        "draft_lightning.estimators.ReFL",
        "draft_lightning.estimators.DirectAlign",
        "draft_lightning.rewards.Reward",
    ):
        module, name = cls.rsplit(".", 1)
        summary = getattr(__import__(module, fromlist=[name]), name).__doc__.strip()
        assert "\n" not in summary.split("\n\n")[0], f"{cls}: summary spans lines"


def test_draft_lightning_is_the_same_cli(tmp_path):
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("draft-lightning") == scripts.get("lightning") == "draft_lightning.cli:main"

    result = run_cli(["--help"], tmp_path, script="draft-lightning")
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("usage: draft-lightning")
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout


# --- 3. hub weights that are not there -------------------------------------------------------


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_env(tmp_path: Path, offline: bool) -> tuple[dict[str, str], Path]:
    """The environment with an empty Hugging Face cache, and that cache's folder."""
    if not offline:
        if _resolves("huggingface.co"):
            pytest.skip(
                "SKIPPED ON PURPOSE: huggingface.co resolves from this machine, so this run "
                "would start downloading Stable Diffusion (GBs); the HF_HUB_OFFLINE case still runs"
            )
        if any(os.environ.get(name) for name in PROXY_VARS):
            pytest.skip("SKIPPED ON PURPOSE: a proxy is configured, the hub may be reachable")
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    env = os.environ.copy()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    env.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env, hf_home / "hub"


def assert_fails_fast_offline(args: list[str], tmp_path: Path, offline: bool, *expected: str):
    env, cache = hub_env(tmp_path, offline)
    start = time.monotonic()
    result = run_cli(args, tmp_path, env, timeout=60)
    elapsed = time.monotonic() - start
    line = assert_refused(result, tmp_path, str(cache), *expected)
    assert "download" in line, line
    assert elapsed < 30, f"took {elapsed:.1f} s to fail"
    weights = (".safetensors", ".bin", ".pth", ".pt", ".incomplete")
    assert not [p for p in cache.parent.rglob("*") if p.suffix in weights], "it downloaded"
    return line


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable-hub"])
def test_missing_sd_checkpoint_is_one_line(offline, tmp_path):
    # draft_lv.yaml's reward needs hub weights too and is built before the model: a
    # weights-free reward leaves the SD checkpoint as the one thing missing.
    args = ["fit", "--config", str(CONFIGS / "draft_lv.yaml"), "--model.reward", "Colorfulness"]
    line = assert_fails_fast_offline(args, tmp_path, offline, SD_REPO, "model.pretrained_model")
    assert "downloads are missing" not in line, line  # named once, not twice


def test_paper_config_offline_names_every_missing_download_in_one_line(tmp_path):
    # draft_lv.yaml as shipped on a fresh offline machine: the reward's CLIP and head and the
    # SD checkpoint are all missing, and one line names the three, so one fetch suffices.
    args = ["fit", "--config", str(CONFIGS / "draft_lv.yaml")]
    line = assert_fails_fast_offline(args, tmp_path, True, SD_REPO)
    assert "3 downloads are missing" in line, line
    for repo in ("timm/vit_large_patch14_clip_224.openai", "trl-lib/ddpo-aesthetic-predictor"):
        assert f"hf download {repo}" in line, line
    assert f"hf download {SD_REPO}" in line, line


# --- 4. bad values are refused before anything loads -----------------------------------------


@pytest.fixture
def weightless_tiny(tiny_sd, tmp_path) -> Path:
    """The tiny model's folder with its configs and tokenizer but no weight file at all."""
    folder = shutil.copytree(tiny_sd, tmp_path / "weightless-tiny")
    weights = [*folder.rglob("*.safetensors"), *folder.rglob("*.bin")]
    assert weights, f"no weight files found in {tiny_sd}"
    for path in weights:
        path.unlink()
    return folder


BAD_VALUES = {
    # id: (algorithm, overrides, texts the one error line must contain)
    "k-below-1": ("draft_k", ["--model.estimator.init_args.k", "0"], ["k=0"]),
    "k-above-num_steps": (
        "draft_k",
        ["--model.estimator.init_args.k", "5", "--model.sampling.num_steps", "4"],
        ["k=5", "num_steps=4"],
    ),
    "lv-n-below-1": ("draft_lv", ["--model.estimator.init_args.n", "0"], ["n=0"]),
    "num_steps-below-1": ("draft_lv", ["--model.sampling.num_steps", "0"], ["num_steps=0"]),
    "guidance-negative": (
        "draft_lv",
        ["--model.sampling.guidance_scale", "-1"],
        ["guidance_scale=-1"],
    ),
    "lora-rank-below-1": ("draft_lv", ["--model.lora.rank", "0"], ["rank=0"]),
    # Checked against the checkpoint's configs: run on a copy without weights.
    "resolution-33": (
        "draft_lv",
        ["--model.sampling.resolution", "33", "--model.pretrained_model", "{weightless}"],
        ["resolution=33", "factor 2"],
    ),
    "lora-target-unknown": (
        "draft_lv",
        [
            "--model.lora.target_modules",
            "[to_q, not_a_layer]",
            "--model.pretrained_model",
            "{weightless}",
        ],
        ["'not_a_layer'"],
    ),
    "heldout-unknown-class": (
        "draft_lv",
        ["--model.heldout_rewards", "[{class_path: draft_lightning.rewards.NoSuch}]"],
        ["heldout_rewards", "NoSuch"],
    ),
    # Refused before the weights load: run on a copy without weights.
    "heldout-names-repeated": (
        "draft_lv",
        [
            "--model.heldout_rewards",
            "[{class_path: draft_lightning.rewards.Brightness}, "
            "{class_path: draft_lightning.rewards.Brightness}]",
            "--model.pretrained_model",
            "{weightless}",
        ],
        ["heldout_rewards", "'brightness' is given twice"],
    ),
    "hacking-guard-action": ("draft_lv", ["--hacking_guard.action", "shout"], ["shout"]),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_is_refused_in_one_line(case, tmp_path, request):
    algorithm, overrides, expected = BAD_VALUES[case]
    if any("{weightless}" in arg for arg in overrides):
        weightless = request.getfixturevalue("weightless_tiny")
        overrides = [arg.replace("{weightless}", str(weightless)) for arg in overrides]
    result = run_cli(["fit", *overlay(algorithm), *overrides], tmp_path)
    line = assert_refused(result, tmp_path, *expected)
    for loading_error in ("safetensors", "no file named", "weights"):
        assert loading_error not in line.lower(), line


def test_trainer_setting_lightning_refuses_is_one_line(tmp_path):
    # cpu_tiny.yaml adds a ModelCheckpoint callback, which Trainer refuses without checkpointing.
    args = ["fit", *overlay("draft_k"), "--trainer.enable_checkpointing", "false"]
    result = run_cli(args, tmp_path)
    assert_refused(result, tmp_path, "trainer:", "enable_checkpointing")


def test_unparsable_value_gets_no_usage_dump(tmp_path):
    result = run_cli(["fit", *overlay("draft_k"), "--model.sampling.num_steps", "abc"], tmp_path)
    report = describe(result)
    assert result.returncode == 2, report
    assert "Traceback" not in result.stdout + result.stderr, report
    assert "usage:" not in result.stderr, report
    assert result.stderr.startswith("error: "), report
    assert "num_steps" in result.stderr and "abc" in result.stderr, report
    assert not (tmp_path / "runs").exists()
