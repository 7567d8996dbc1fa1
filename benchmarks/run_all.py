"""Run every benchmark and rewrite docs/benchmarks.md (what `make bench` does).

Why one driver: the doc must show every table with its exact command, the machine and the
date, and check the issue's targets from the same run's numbers, so nothing is pasted by hand.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.run_all [--smoke] [--out FILE]
        [--only parts,memory,...] [--wait-quiet SECONDS] [--no-prompt-stream]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import ROOT, Section, machine, table, wait_until_quiet, write_atomic

DOC = ROOT / "docs" / "benchmarks.md"
NOTES = ROOT / "benchmarks" / "notes.md"
# The last full run's numbers, so the doc can be re-rendered (--render) without rerunning.
LAST_RUN = ROOT / ".cache" / "benchmarks" / "last_run.json"
COMMAND = "OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.{}"


def benchmarks() -> dict[str, tuple[str, Callable[[bool], Section]]]:
    """name -> (module, run function); imported lazily so --only stays cheap."""
    from benchmarks import (
        bench_growth,
        bench_memory,
        bench_paper_scale,
        bench_parts,
        bench_sampler,
        bench_speedups,
        bench_trl,
    )

    return {
        "parts": ("bench_parts", bench_parts.run),
        "memory": ("bench_memory", bench_memory.run),
        "growth": ("bench_growth", bench_growth.run),
        "trl": ("bench_trl", bench_trl.run),
        "sampler": ("bench_sampler", bench_sampler.run),
        "speedups": ("bench_speedups", bench_speedups.run),
        "paper": ("bench_paper_scale", bench_paper_scale.run),
    }


def prompt_stream(smoke: bool) -> Section:
    """The data developer's prompt-stream benchmark, at a size that keeps `make bench` short."""
    lines = 20_000 if smoke else 200_000
    args = ["benchmarks/bench_prompt_stream.py", "--lines", str(lines)]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    text = out.stdout.strip() if out.returncode == 0 else f"failed: {out.stderr[-500:]}"
    body = f"```\n{text}\n```\n\n({seconds:.0f} s; see docs/data.md for what the columns mean.)"
    command = f"OMP_NUM_THREADS=2 .venv/bin/python {' '.join(args)}"
    return Section("7. Prompt stream (data loading)", command, body, {"seconds": seconds})


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def targets(sections: dict[str, Section]) -> str:
    """The issue's targets, checked against this run's numbers."""
    rows = []
    if "parts" in sections:
        d1 = sections["parts"].data["DRaFT-1"]
        hand, light = d1["step_over_sum"][0], d1["lightning_over_sum"][0]
        rows.append(
            [
                "training step <= 1.10 x sum of its parts (DRaFT-1)",
                f"hand {hand:.2f}x, Lightning {light:.2f}x",
                verdict(max(hand, light) <= 1.10),
            ]
        )
    if "memory" in sections:
        data = sections["memory"].data["rows"]
        ck = {r["k"]: r for r in data if r["kind"] == "k" and r["ckpt"]}
        if 1 in ck and 50 in ck:
            peak = ck[50]["peak_bytes"] / ck[1]["peak_bytes"]
            rows.append(
                [
                    "checkpointed peak memory at K=50 <= 1.5 x K=1",
                    f"{peak:.2f}x",
                    verdict(peak <= 1.5),
                ]
            )
    trl = sections.get("trl")
    if trl is not None and "ratios" in trl.data:
        for k, stats in trl.data["ratios"].items():
            rows.append(
                [
                    f"faster than TRL AlignProp per step, K={k}",
                    f"ours / TRL = {stats[0]:.2f}",
                    verdict(stats[0] < 1.0),
                ]
            )
            mem = trl.data["memory"]
            theirs = mem[f"TRL K={k}"]
            for label in ("ours", "ours checkpoint_blocks"):
                if f"{label} K={k}" not in mem:
                    continue
                ours = mem[f"{label} K={k}"]
                peak = ours["peak_step_bytes"] / theirs["peak_step_bytes"]
                act = ours["activation_bytes"] / max(theirs["activation_bytes"], 1)
                rows.append(
                    [
                        f"lower peak memory than TRL, K={k}"
                        + (" (opt-in checkpoint_blocks)" if "blocks" in label else ""),
                        f"step peak ours / TRL = {peak:.3f} (activations {act:.3f})",
                        verdict(peak < 1.0),
                    ]
                )
    elif trl is not None:
        rows.append(["TRL comparison", trl.data.get("error", "not run"), "**missed**"])
    if "sampler" in sections:
        times = sections["sampler"].data["times"]
        from benchmarks.common import ratio

        for pipeline, ours in (
            ("diffusers pipeline, our UNet + LoRA", "ours: DraftModule.generate"),
            ("diffusers pipeline, base UNet", "ours: DraftModule.generate"),
            ("diffusers pipeline, base UNet", "ours, merge_lora_without_grad"),
        ):
            speed = ratio(times, pipeline, ours)[0]
            rows.append(
                [
                    f"no-grad sampler at least as fast as the {pipeline}"
                    + (" (opt-in merge_lora_without_grad)" if "merge" in ours else ""),
                    f"pipeline time / ours = {speed:.2f}",
                    verdict(speed >= 1.0),
                ]
            )
    return table(["target (issue 8)", "this run", "verdict"], rows)


def render(sections: dict[str, Section], facts: dict[str, str], quiet: tuple[str, str]) -> str:
    header = (
        "# Benchmarks\n\n"
        "Generated by `make bench` (`OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.run_all`);"
        " do not edit by hand: rerun it. Every comparison runs its variants side by side in one"
        " process, alternating, and is reported as a ratio (median and min-max over rounds);"
        " absolute seconds are context only, since no GPU was used and timings on this shared"
        " CPU drift by +-25% between runs. Memory is counted in bytes and does not drift.\n\n"
    )
    header += table(["machine", ""], [[k, v] for k, v in facts.items()])
    header += (
        f"\n\nOther heavy processes (tests, training runs) at the start: {quiet[0]};"
        f" at the end: {quiet[1]}.\n\n"
    )
    notes = NOTES.read_text().strip() if NOTES.exists() else ""
    header += "## Targets\n\n" + targets(sections) + "\n\n" + notes + "\n"
    parts = [header]
    for name, section in sections.items():
        command = section.command or COMMAND.format(benchmarks()[name][0])
        seconds = section.data.get("_seconds")
        took = f" ({seconds:.0f} s)" if seconds is not None else ""
        parts.append(
            f"## {section.title}\n\nCommand: `{command}`{took}\n\n{section.body.strip()}\n"
        )
    return "\n".join(parts)


def save_run(sections: dict[str, Section], facts: dict, quiet: tuple[str, str]) -> None:
    payload = {
        "facts": facts,
        "quiet": list(quiet),
        "sections": {name: vars(section) for name, section in sections.items()},
    }
    write_atomic(LAST_RUN, json.dumps(payload, indent=1, default=str))


def load_run() -> tuple[dict[str, Section], dict, tuple[str, str]]:
    payload = json.loads(LAST_RUN.read_text())
    sections = {name: Section(**fields) for name, fields in payload["sections"].items()}
    return sections, payload["facts"], tuple(payload["quiet"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest sizes (tests use this)")
    parser.add_argument("--out", type=Path, help=f"where to write (default {DOC}, not in smoke)")
    parser.add_argument("--only", help="comma-separated subset: " + ", ".join(benchmarks()))
    parser.add_argument("--wait-quiet", type=float, default=900.0, help="max seconds to wait")
    parser.add_argument("--no-prompt-stream", action="store_true", help="skip table 7")
    parser.add_argument("--render", action="store_true", help=f"re-render from {LAST_RUN}")
    args = parser.parse_args()
    if args.render:
        write_atomic(args.out or DOC, render(*load_run()))
        return
    names = args.only.split(",") if args.only else list(benchmarks())
    quiet_start = wait_until_quiet(0 if args.smoke else args.wait_quiet)
    facts = machine()
    sections: dict[str, Section] = {}
    for name in names:
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        section = benchmarks()[name][1](args.smoke)
        section.data["_seconds"] = time.perf_counter() - start
        sections[name] = section
        print(f"[bench] {name} done in {section.data['_seconds']:.0f} s", file=sys.stderr)
    if not args.no_prompt_stream and not args.only:
        sections["prompt_stream"] = prompt_stream(args.smoke)
    quiet_end = wait_until_quiet(0)
    text = render(sections, facts, (quiet_start, quiet_end))
    out = args.out or (None if args.smoke or args.only else DOC)
    if out == DOC:
        save_run(sections, facts, (quiet_start, quiet_end))
    if out is None:
        print(text)
    else:
        write_atomic(out, text)
        print(f"[bench] wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
