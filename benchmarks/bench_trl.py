"""Peer comparison with Hugging Face TRL's AlignPropTrainer (issue 8, table 4a).

Why: AlignProp is DRaFT-K with random K, and TRL 0.23.x (the last release that has it) is
the most used implementation; ours should be faster per step and no larger in memory at the
same K, batch, steps and reward. TRL is installed by this script into its own venv
(benchmarks/.venv-trl, git-ignored) with the same torch pins (-c constraints.txt), never
vendored; the measurement itself is benchmarks/trl_peer.py, run inside that venv.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.bench_trl [--smoke] [--no-install]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, Section, fmt_ratio, mib, table

VENV = ROOT / "benchmarks" / ".venv-trl"
TRL_SPEC = "trl==0.23.1"
STAMP = VENV / ".installed-trl-0.23.1"


class PeerUnavailable(RuntimeError):
    """TRL could not be installed or run here; the message says exactly why."""


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(install: bool = True) -> None:
    """Create the TRL venv once: trl 0.23.1 plus this project, torch pinned as in ours."""
    if STAMP.exists() and python().exists():
        return
    if not install:
        raise PeerUnavailable(f"{VENV} is missing (run without --no-install to create it)")
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(python()), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [
            str(python()),
            *("-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt")),
            *(TRL_SPEC, "-e", str(ROOT)),
        ],
    ]
    for command in steps:
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
            raise PeerUnavailable(f"`{' '.join(command[:6])} ...` failed: " + " / ".join(tail))
    STAMP.touch()


def measure(smoke: bool) -> dict:
    command = [str(python()), "-m", "benchmarks.trl_peer", *(["--smoke"] if smoke else [])]
    env = os.environ | {"TQDM_DISABLE": "1"}
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = out.stderr.strip().splitlines()[-8:]
        raise PeerUnavailable("trl_peer failed: " + " / ".join(tail))
    return json.loads(lines[-1])


def render(result: dict) -> str:
    rows = []
    for k in sorted({int(name.split("=")[1]) for name in result["times"]}):
        theirs = result["memory"][f"TRL K={k}"]
        for label in ("ours", "ours checkpoint_blocks"):
            if f"{label} K={k}" not in result["memory"]:
                continue
            mem = result["memory"][f"{label} K={k}"]
            timed = label == "ours"
            rows.append(
                [
                    k,
                    label,
                    fmt_ratio(result["ratios"][str(k)]) if timed else "(table 5)",
                    f"{result['times'][f'ours K={k}']:.2f} / {result['times'][f'TRL K={k}']:.2f}"
                    if timed
                    else "",
                    f"{mib(mem['activation_bytes'])} / {mib(theirs['activation_bytes'])}",
                    f"{mem['activation_bytes'] / max(theirs['activation_bytes'], 1):.3f}",
                    f"{mib(mem['peak_step_bytes'])} / {mib(theirs['peak_step_bytes'])}",
                    f"{mem['peak_step_bytes'] / theirs['peak_step_bytes']:.2f}",
                ]
            )
    body = table(
        [
            "K",
            "ours as",
            "time ours / TRL",
            "s ours / TRL",
            "activations MiB ours / TRL",
            "ratio",
            "step peak MiB ours / TRL",
            "ratio",
        ],
        rows,
    )
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    body = f"Commit measured: {result.get('commit', 'unknown')}.\n\n" + body
    threads = result.get("threads", "")
    body += (
        f"\n\nBoth in one process{threads} of benchmarks/.venv-trl ({versions}), steps alternating,"
        f" {result['rounds']} timed rounds after a profiled warm-up step (memory):"
        f" {result['resolution']} px, batch"
        f" {result['batch']}, {result['steps']} DDIM steps, eta 0, guidance 7.5, fp32, LoRA"
        f" rank {result['lora_rank']} alpha 4 on to_q/to_k/to_v/to_out.0 (TRL's fixed"
        " adapter), the same brightness reward, AdamW + clipping at 1.0 on both sides. TRL:"
        " `truncated_backprop_rand=False`, `truncated_backprop_timestep = steps - K`,"
        " `save_freq` 1e9, timed through its public `AlignPropTrainer.step`; ours: the hand"
        " step of table 1 with DraftK(K) and the options the shipped GPU configs set ("
        + ", ".join(f"{k}={v}" for k, v in result.get("ours_options", {}).items())
        + "; the LoRA merged into the base weights for the no-grad steps and"
        " share_first_attention are defaults), its first step (which compiles, once per"
        f" process) taken before the rest and not timed: {result.get('first_step_seconds', 0):.0f}"
        " s. `activations` = storages saved by autograd and alive"
        " when backward starts; `step peak` = peak tensor bytes allocated above the level at"
        " the step's start (weights excluded; the same model on both sides). Memory is"
        " measured on the first step of each variant, under the profiler; the timed rounds"
        " run without it. `ours checkpoint_blocks` is the opt-in `checkpoint_blocks=True`"
        " (memory only here; its time cost is in table 5)."
    )
    return body


def run(smoke: bool = False, install: bool = True) -> Section:
    try:
        ensure_venv(install)
        result = measure(smoke)
    except PeerUnavailable as error:
        body = f"TRL could not be run here, so there is no comparison: {error}"
        return Section("4a. Peer: TRL AlignPropTrainer", "", body, {"error": str(error)})
    return Section("4a. Peer: TRL AlignPropTrainer", "", render(result), result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one round")
    parser.add_argument("--no-install", action="store_true", help="fail if the venv is missing")
    args = parser.parse_args()
    print(run(args.smoke, install=not args.no_install).body)


if __name__ == "__main__":
    main()
