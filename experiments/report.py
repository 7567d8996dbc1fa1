"""docs/experiments.md from the cached runs: the registration it judges by, each claim's
verdict with its interval and its registered rule quoted, the reward-hacking check, the
results, figures and sample grids (plus experiments/notes.md: what was read after the run)."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from experiments import claims, ground_truth, plots
from experiments.methods import (
    DDPO_ETA,
    DDPO_STAT_MIN_COUNT,
    DDPO_UPDATES_PER_BATCH,
    FULL,
    K5,
    K10,
    LV,
    ONE,
)
from experiments.run import decode_pixels
from experiments.stats import fmt, mean_interval

HERE = Path(__file__).resolve().parent
REGISTRATION = HERE / "preregistration.md"
AMENDMENT = HERE / "amendment_1.md"  # adds a flag to the hacking check
NOTES = HERE / "notes.md"


def _table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _utc(timestamp: float) -> str:
    return f"{datetime.fromtimestamp(timestamp, timezone.utc):%Y-%m-%d %H:%M} UTC"


def registration() -> tuple[str, float] | None:
    """(short hash, commit time) of the commit that last changed the registration; None if it
    is not committed (then no result is confirmatory)."""
    return committed(REGISTRATION)


def amendment() -> tuple[str, float] | None:
    """The same for amendment 1 (None: its added flag applies to no run)."""
    return committed(AMENDMENT)


def committed(path: Path) -> tuple[str, float] | None:
    """(short hash, commit time) of the commit that last changed `path`; None if it is not
    committed as it stands."""
    out = subprocess.run(
        ["git", "log", "-1", "--format=%h %ct", "--", str(path)],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", str(path)],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or not out.stdout.strip() or dirty.stdout.strip():
        return None
    short, when = out.stdout.split()
    return short, float(when)


def rules() -> dict[str, str]:
    """Each registered claim's text by its number ("1" .. "6"): paragraphs folded into one
    line each, its own bullets kept as nested bullets."""
    text = REGISTRATION.read_text()
    found = {}
    for match in re.finditer(r"^### Claim (\d)[^\n]*\n(.*?)(?=^### |^## |\Z)", text, re.S | re.M):
        items = re.split(r"^- ", match.group(2), flags=re.M)
        folded = [" ".join(item.split()) for item in items]
        found[match.group(1)] = folded[0] + "".join(f"\n  - {item}" for item in folded[1:] if item)
    return found


def label(name: str, num_steps: int) -> str:
    return f"{name}, T={num_steps}"


def judge_claims(everything: dict) -> list[tuple[str, str, Callable[[], claims.Judgement]]]:
    """(claim number, claim, how to judge it) in the registration's order."""
    s, groups = everything["settings"], everything["groups"]
    norms = {t: [seed["norms"] for seed in seeds] for t, seeds in everything["norms"].items()}
    t, long_t = s["num_steps"], s["long_num_steps"]
    one, lv = label(ONE, t), label(LV, t)
    plus = f"DRaFT+ (kl {s['kl_coeff']:g}), T={t}"
    choice = everything.get("choice")
    ddpo = control = None
    if choice is not None:
        ddpo = f"DDPO (lr {choice[0]:g}, clip {choice[1]:g}), T={t}"
        control = f"DDPO (lr {choice[0]:g}, clip {choice[1]:g}), red control, T={t}"

    def scaled(scale: float) -> list[tuple[float, float]]:
        return [
            (
                r["lora_scaled"][f"{scale:g}"]["reward"],
                r["lora_scaled"][f"{scale:g}"]["unconditional"]["diversity"],
            )
            for r in groups[lv]
        ]

    def final_pairs(runs: list[dict]) -> list[tuple[float, float]]:
        return [(r["val"][-1]["reward"], r["unconditional"]["1"]["diversity"]) for r in runs]

    return [
        (
            "1",
            "DRaFT-LV reaches DRaFT-1's reward in fewer steps at small extra cost",
            lambda: claims.lv_fewer_steps(groups[one], groups[lv]),
        ),
        (
            "2",
            f"Small K (K = 1) beats full backpropagation per step, T = {t}",
            lambda: claims.small_k_beats_full(groups[one], groups[label(FULL, t)]),
        ),
        (
            "2",
            f"Small K (K = 1) beats full backpropagation per step, T = {long_t}",
            lambda: claims.small_k_beats_full(
                groups[label(ONE, long_t)], groups[label(FULL, long_t)]
            ),
        ),
        (
            "3",
            f"The gradient norm grows with K, T = {t}",
            lambda: claims.gradient_norm_grows(norms[t]),
        ),
        (
            "3",
            f"The gradient norm grows with K, T = {long_t}",
            lambda: claims.gradient_norm_grows(norms[long_t]),
        ),
        (
            "4",
            "Positive control: this DDPO learns where RL should (red, 8 captions)",
            lambda: claims.learns(groups[control]),
        ),
        (
            "5",
            "DRaFT-1 needs far fewer reward queries than DDPO (main task)",
            lambda: claims.fewer_queries_than_ddpo(groups[one], groups[ddpo]),
        ),
        (
            "6",
            "6a. Unregularised DRaFT-LV loses diversity",
            lambda: claims.diversity_lost(groups[lv]),
        ),
        (
            "6",
            f"6b. DRaFT+ (kl {s['kl_coeff']:g}) keeps more diversity than stopping early",
            lambda: claims.keeps_more_than_early_stopping(
                groups[lv], final_pairs(groups[plus]), "DRaFT+"
            ),
        ),
        (
            "6",
            "6c. LoRA strength 0.5 keeps more diversity than stopping early",
            lambda: claims.keeps_more_than_early_stopping(
                groups[lv], scaled(0.5), "LoRA strength 0.5"
            ),
        ),
    ]


PART_OF = {
    "1": "efficiency",
    "2": "chain",
    "3": "chain",
    "4": "ddpo",
    "5": "ddpo",
    "6": "efficiency",
}


def verdict_rows(everything: dict) -> list[list[str]]:
    rows = []
    for number, claim, judge in judge_claims(everything):
        try:
            j = judge()
        except (KeyError, TypeError):  # its runs are not (all) cached yet
            part = PART_OF[number]
            rows.append([number, claim, "", "", "**not run**", f"needs `make experiments-{part}`"])
            continue
        estimate = fmt(j.interval, 3)
        rows.append(
            [number, claim, f"{j.metric}: {estimate}", j.threshold, f"**{j.verdict}**", j.evidence]
        )
    return rows


OTHER_ATTRIBUTES = ("colour", "size", "position", "background")


def caption_agreement(runs: list[dict], stage: str) -> list[dict[str, float]]:
    """Per run: of its stored validation samples at `stage` (fully stated captions), the
    fraction the judge reads as showing the colour, size, position and background their
    caption states (amendment 1). A reward for the shape alone can be gamed by drawing one
    thing for every caption; that loses these."""
    import torch

    from draft_lightning.toy import quality
    from draft_lightning.toy.judge import load_judge
    from draft_lightning.toy.paths import toy_judge_path

    judge = load_judge(toy_judge_path())
    shown = []
    for run in runs:
        samples = run["samples"][stage]
        with torch.no_grad():
            found = quality.caption_agreement(
                judge, decode_pixels(samples).float() / 255, samples["prompts"]
            )
        shown.append({attribute: found[attribute] for attribute in OTHER_ATTRIBUTES})
    return shown


def hacking_rows(groups: dict, toy: bool) -> list[list[str]]:
    amended = amendment()
    rows = []
    for name, runs in groups.items():
        if "red control" in name:
            continue
        check = claims.hacking(runs)
        row = [
            name,
            fmt(check["reward_gain"]),
            fmt(check["judge_gain"]),
            f"{check['shown_base']:.0%} -> {check['shown_final']:.0%}",
            "**flagged**" if check["flagged"] else "no",
        ]
        if toy:
            base, end = caption_agreement(runs, "base"), caption_agreement(runs, "final")
            lost = claims.prompt_lost(
                [statistics.fmean(b.values()) for b in base],
                [statistics.fmean(e.values()) for e in end],
            )

            def mean(of: list[dict[str, float]], attribute: str) -> float:
                return statistics.fmean(r[attribute] for r in of)

            row.append(
                fmt(lost["change"])
                + " ("
                + ", ".join(
                    f"{a} {mean(base, a):.0%} -> {mean(end, a):.0%}" for a in OTHER_ATTRIBUTES
                )
                + ")"
            )
            applies = amended is not None and all(r["started"] >= amended[1] for r in runs)
            flag = "**prompt lost**" if lost["flagged"] else "no"
            row.append(flag if applies else f"({flag}; exploratory: runs predate amendment 1)")
        rows.append(row)
    return rows


def results_rows(groups: dict) -> list[list[str]]:
    rows = []
    for name, runs in groups.items():
        reward = mean_interval(claims.final_values(runs))
        judge = mean_interval(claims.final_values(runs, "judge"))
        rows.append(
            [
                name,
                len(runs),
                f"{statistics.fmean(claims.base_values(runs)):.3f}",
                fmt(reward),
                fmt(judge),
                runs[0]["val"][-1]["step"],
                f"{statistics.fmean(r['val'][-1]['queries'] for r in runs):.0f}",
                f"{claims.seconds_per_step(runs):.2f}",
                f"{sum(r['wall_seconds'] for r in runs) / 60:.1f}",
                ", ".join(sorted({r["commit"] for r in runs})),
            ]
        )
    return rows


def k_rows(groups: dict, settings: dict) -> list[list[str]]:
    """K = 5 and K = 10 against full DRaFT at both chain lengths (no verdict: registered as
    descriptive)."""
    rows = []
    for t in (settings["num_steps"], settings["long_num_steps"]):
        full = groups.get(label(FULL, t))
        for name in (ONE, K5, K10):
            runs = groups.get(label(name, t))
            if runs is None or full is None:
                continue
            j = claims.small_k_beats_full(runs, full, name)
            rows.append(
                [
                    t,
                    name,
                    fmt(mean_interval([claims.area_per_step(r) for r in runs])),
                    fmt(j.interval),
                ]
            )
    return rows


def diversity_points(groups: dict, settings: dict) -> dict[str, list[tuple[float, float]]]:
    t = settings["num_steps"]
    lv = groups.get(label(LV, t))
    plus = groups.get(f"DRaFT+ (kl {settings['kl_coeff']:g}), T={t}")
    if lv is None:
        return {}
    paths = [claims.diversity_path(run) for run in lv]
    length = min(len(p) for p in paths)
    points = {
        "DRaFT-LV while training (stop early), mean": [
            (statistics.fmean(p[i][0] for p in paths), statistics.fmean(p[i][1] for p in paths))
            for i in range(length)
        ]
    }
    if plus is not None:
        points[f"DRaFT+ (kl {settings['kl_coeff']:g}), end"] = [
            (
                statistics.fmean(r["val"][-1]["reward"] for r in plus),
                statistics.fmean(r["unconditional"]["1"]["diversity"] for r in plus),
            )
        ]
    for scale in settings["lora_scales"]:
        key = f"{scale:g}"
        points[f"DRaFT-LV at LoRA strength {key}"] = [
            (
                statistics.fmean(r["lora_scaled"][key]["reward"] for r in lv),
                statistics.fmean(r["lora_scaled"][key]["unconditional"]["diversity"] for r in lv),
            )
        ]
    return points


def figures(everything: dict, folder: Path) -> dict[str, Path]:
    s, groups = everything["settings"], everything["groups"]
    t, long_t = s["num_steps"], s["long_num_steps"]
    paths: dict[str, Path] = {}

    def pick(names: list[str]) -> dict[str, list[dict]]:
        return {name: groups[name] for name in names if name in groups}

    efficiency = pick([label(ONE, t), label(LV, t), f"DRaFT+ (kl {s['kl_coeff']:g}), T={t}"])
    if efficiency:
        paths["efficiency"] = plots.curves(
            efficiency, "step", folder / "efficiency.png", "DRaFT-1, DRaFT-LV, DRaFT+ (claims 1, 6)"
        )
    for steps in (t, long_t):
        chain = pick([label(name, steps) for name in (ONE, K5, K10, FULL)])
        if len(chain) > 1:
            paths[f"chain{steps}"] = plots.curves(
                chain,
                "step",
                folder / f"chain_T{steps}.png",
                f"DRaFT-K and full DRaFT, T = {steps}",
            )
    if everything["norms"]:
        paths["norms"] = plots.gradient_norms(
            {t: [seed["norms"] for seed in seeds] for t, seeds in everything["norms"].items()},
            folder / "gradient_norm_vs_k.png",
        )
    sweep = {k: [v] for k, v in everything["sweep"].items() if v is not None}
    if sweep:
        paths["sweep"] = plots.curves(
            sweep, "queries", folder / "ddpo_sweep.png", f"DDPO sweep (seed {s['ddpo_sweep_seed']})"
        )
    ddpo = {n: r for n, r in groups.items() if n.startswith("DDPO") and "control" not in n}
    if ddpo and label(ONE, t) in groups:
        paths["ddpo"] = plots.curves(
            {label(ONE, t): groups[label(ONE, t)], **ddpo},
            "queries",
            folder / "ddpo_vs_draft.png",
            "DDPO against DRaFT-1 (claim 5)",
            log_x=True,
        )
    control = {n: r for n, r in groups.items() if "red control" in n}
    if control:
        paths["control"] = plots.curves(
            control, "queries", folder / "ddpo_control.png", "DDPO positive control: red (claim 4)"
        )
    points = diversity_points(groups, s)
    if points:
        paths["diversity"] = plots.diversity(points, folder / "diversity.png")
    main = {n: r for n, r in groups.items() if "control" not in n}
    if main:
        first = next(iter(main.values()))[0]["samples"]
        per_seed = s["num_val_seeds"]
        columns = list(range(0, len(first["base"]["prompts"]), per_seed))  # validation seed 0
        rows, tolerances = sample_rows(main, columns)
        notes = None
        if s["use_toy_reward"]:
            notes = {}
            for name, images in rows.items():
                notes |= ground_truth.grid_notes({name: images}, tolerances[name])
        paths["samples"] = plots.sample_grid(
            rows, [first["base"]["prompts"][c] for c in columns], folder / "samples.png", notes
        )
    if control:
        runs = next(iter(control.values()))
        first = runs[0]["samples"]
        rows = {"base model": decode_pixels(first["base"]), "DDPO": decode_pixels(first["final"])}
        paths["control_samples"] = plots.sample_grid(
            rows, first["base"]["prompts"], folder / "samples_red_control.png"
        )
    return paths


def sample_rows(
    groups: dict[str, list[dict]], columns: list[int]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The sample grid's rows (uint8 images at `columns`): the base model, then each method's
    final samples from its seed-0 run. Methods whose base-model samples differ from the base
    row shown last (T = 50 against T = 20; DDPO samples with eta 1, the others
    deterministically) get their own base-model row above them, so each tuned image sits
    below the base image it started from. Each row's tolerance for the renderer's marks is
    the farthest of its base's samples."""
    rows: dict[str, torch.Tensor] = {}
    tolerances: dict[str, float] = {}
    shown_base, base_tolerance = None, 0.0
    for name, runs in groups.items():
        samples = runs[0]["samples"]
        base = decode_pixels(samples["base"])
        if shown_base is None or not torch.equal(base, shown_base):
            shown_base = base
            base_tolerance = ground_truth.fit(samples["base"]).distance.max().item()
            title = "base model" if not rows else "base model,\nsampled as the rows below"
            # the rows are a dict: a repeated title gets trailing spaces, which do not show
            title += " " * sum(key.rstrip() == title for key in rows)
            rows[title] = base[columns]
            tolerances[title] = base_tolerance
        rows[name] = decode_pixels(samples["final"])[columns]
        tolerances[name] = base_tolerance
    return rows, tolerances


def sweep_gains(sweep: dict[str, dict | None], settings: list) -> str:
    """'(lr, clip) gain' for each of DDPO's sweep settings, in the plan's order (the sweep's
    runs are listed in the same order as its settings)."""
    parts = []
    for (lr, clip), result in zip(settings, sweep.values(), strict=True):
        gain = "not run" if result is None else f"{claims.reward_gain(result):+.3f}"
        parts.append(f"({lr:g}, {clip:g}) {gain}")
    return ", ".join(parts)


def provenance(everything: dict) -> list[str]:
    """When and on what the runs ran, against the registration."""
    runs = [r for runs in everything["groups"].values() for r in runs]
    runs += [r for seeds in everything["norms"].values() for r in seeds]
    runs += [r for r in everything["sweep"].values() if r is not None]
    registered = registration()
    lines = []
    if registered is None:
        lines.append(
            "- Registration: experiments/preregistration.md is not committed as it "
            "stands: **no result below is confirmatory**."
        )
    else:
        early = [r for r in runs if r["started"] < registered[1]]
        lines.append(
            f"- Registration: experiments/preregistration.md as committed in {registered[0]} "
            f"({_utc(registered[1])}); "
            + (
                f"**{len(early)} runs started before it: not confirmatory**"
                if early
                else "every run below started after it"
            )
        )
    if runs:
        commits = sorted({r["commit"] for r in runs})
        wall = sum(r.get("wall_seconds", 0.0) for r in runs)
        lines.append(
            f"- Code: commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}; runs started "
            f"between {_utc(min(r['started'] for r in runs))} and "
            f"{_utc(max(r['started'] for r in runs))}; {wall / 60:.0f} min of training and "
            "evaluation in all"
        )
    if everything.get("parts"):
        lines.append(part_line(everything["parts"]))
    lines.append(
        f"- Machine: {os.cpu_count()} CPU cores ({platform.machine()}), Python "
        f"{platform.python_version()}, no GPU. Seconds per step are this CPU's figures."
    )
    return lines


def part_line(parts: dict[str, dict]) -> str:
    """Runs and wall time per part: the whole plan takes far more than 3 hours of this CPU,
    so a person runs it as separate targets, and needs each one's cost."""
    described = [
        f"{part} (`make experiments-{part}`) {t['cached']} of {t['planned']} cached, "
        f"{t['seconds'] / 3600:.1f} h"
        for part, t in parts.items()
    ]
    total = sum(t["seconds"] for t in parts.values()) / 3600
    complete = all(t["cached"] == t["planned"] for t in parts.values())
    return (
        "- Time per part (training runs and, in the chain part, gradient-norm measurements; "
        "the wall time of the training runs as they ran on this machine, beside whatever else "
        f"ran then): {'; '.join(described)}. {total:.1f} h {'in all' if complete else 'so far'}"
        ", so the plan is split into these targets, each resumable."
    )


def amendment_line() -> str:
    amended = amendment()
    if amended is None:
        return "not committed as it stands: it applies to no run"
    return f"committed in {amended[0]}, {_utc(amended[1])}"


def not_run(everything: dict) -> str:
    """What the plan still lacks: run groups (with their missing seeds), the gradient norms,
    and DDPO's sweep with the runs planned after it."""
    s = everything["settings"]
    parts = [
        f"{name} ({n} of {len(s['seeds'])} seeds to run)"
        for name, n in everything["missing"].items()
    ]
    lengths = (s["num_steps"], s["long_num_steps"])
    parts += [f"gradient norms at T = {t}" for t in lengths if t not in everything["norms"]]
    if everything.get("choice") is None:
        sweep = everything.get("sweep") or {}
        left = sum(result is None for result in sweep.values())
        parts.append(
            f"DDPO's sweep ({left} of {len(sweep)} runs to run), and its positive control "
            "and comparison runs after it"
        )
    return ", ".join(parts) or "nothing"


def model_name(folder: str) -> str:
    """The model as a reader can find it: the shipped toy model by its place in the package."""
    shipped = Path(__file__).resolve().parents[1] / "src"
    try:
        return f"{Path(folder).resolve().relative_to(shipped)} (toy:sd, shipped in the package)"
    except ValueError:
        return folder


def ground_truth_section(groups: dict) -> str:
    table = ground_truth.rows(groups)
    if not table:
        return ""
    return (
        "### The renderer's reading (exploratory: added after the chain runs at T = 20; not "
        "registered)\n\n"
        "The judge is a network trained on rendered shapes, and it reads the blobs the tuned "
        "models draw as circles. The world's ground truth is its renderer, so each stored "
        "validation sample (the validation captions x seeds, base model and end) is also "
        "fitted with the nearest clean single shape the renderer can draw: any of the three "
        "shapes, at the centres and sizes that hold the world's positions, sizes and jitter "
        "(a half-pixel grid refined in eighth pixels), in the two colours that fit best "
        "(`draft_lightning/toy/shape_fit.py`, docs/toy.md). *Distance* is the root-mean-square "
        "pixel difference to that shape (median over a run's samples, mean over seeds; change "
        "paired by seed, t 95%). A sample is a *clean shape* when it shows a shape (the best "
        "one explains at least half of its variance) no farther from one than the farthest of "
        "the base model's samples (the *tolerance* column), and a *clean circle* when that "
        "shape is a circle (the red control rewards a colour: its row shows whether its shapes "
        "stay clean). The last "
        "column checks the fit on the base model: how often its nearest shape is the one the "
        "caption asks for. Only the final samples are stored, so this reading exists for the "
        "end of training, not along it.\n\n"
        + _table(
            [
                "runs",
                "distance to a clean shape: base -> end",
                "change [95%]",
                "clean shape at the end",
                "clean circle: base -> end",
                "tolerance",
                "base: fit = caption's shape",
            ],
            table,
        )
        + "\n"
    )


def write_report(everything: dict, out: Path, figure_folder: Path, command: str) -> None:
    s, groups = everything["settings"], everything["groups"]
    relative = os.path.relpath(figure_folder, out.parent)
    paths = figures(everything, figure_folder)

    def figure(key: str, caption: str) -> str:
        if key not in paths:
            return ""
        return f"![{caption}]({relative}/{paths[key].name})\n\n*{caption}*\n"

    quoted = rules()
    choice = everything.get("choice")
    doc = [
        "# Experiments: the paper's claims on the toy world, pre-registered\n",
        f"Generated by `{command}` on {_utc(datetime.now(timezone.utc).timestamp())} from the "
        "cached runs of the plan (`make experiments`; the parts run separately with `make "
        "experiments-efficiency`, `experiments-chain` and `experiments-ddpo`). Do not edit by "
        "hand: rerun it.\n",
        *provenance(everything),
        "- Not run yet: " + not_run(everything) + "\n",
        "## Setup\n",
        f"- Model: `{model_name(s['pretrained_model'])}`, {s['resolution']} px, guidance "
        f"{s['guidance_scale']}, DDIM with T = {s['num_steps']} (and {s['long_num_steps']}).",
        f"- Gradient methods: LoRA rank {s['lora_rank']}, AdamW lr {s['lr']}, gradient clipping "
        f"1.0, batch {s['batch_size']}, {s['gradient_steps']} optimiser steps, evaluated every "
        f"{s['val_every']} steps on {s['num_val_prompts']} captions x {s['num_val_seeds']} seeds; "
        f"seeds {', '.join(map(str, s['seeds']))}.",
        f"- DDPO: eta {DDPO_ETA:g}, batches of {s['ddpo_batch_size']} trajectories, "
        f"{DDPO_UPDATES_PER_BATCH} PPO updates per batch, per-caption reward statistics once a "
        f"caption has {DDPO_STAT_MIN_COUNT} rewards; sweep on the main task (seed "
        f"{s['ddpo_sweep_seed']}, {s['ddpo_sweep_batches']} batches) over (lr, clip range), "
        "with each setting's final validation reward gain: "
        + sweep_gains(everything["sweep"], s["ddpo_sweep"])
        + (
            f"; chosen as registered (the highest gain): lr {choice[0]:g}, clip {choice[1]:g}"
            if choice
            else "; sweep not complete"
        )
        + ".",
        "- Intervals: 95%, over seeds (t, Welch or percentile bootstrap as registered). A t "
        "interval around a mean probability (reward, judge) can reach past 0 or 1 when the seeds "
        "disagree: shown as computed, not clipped, as registered.\n",
        "## Verdicts\n",
        _table(
            ["#", "claim", "metric [95% interval]", "threshold", "verdict", "evidence"],
            verdict_rows(everything),
        )
        + "\n",
        "### The registered rules (quoted from experiments/preregistration.md)\n",
        *[f"- **Claim {n}.** {text}" for n, text in quoted.items()],
        "",
        NOTES.read_text().strip() + "\n" if NOTES.exists() else "",
        "## Reward hacking check\n",
        "Registered: reward gain and the judge's gain (final minus step 0, paired by seed); how "
        "many validation samples the judge reads as showing the rewarded attribute, base model "
        "-> end; flagged where the reward rises and the judge does not. Amendment 1 "
        "(experiments/amendment_1.md, " + amendment_line() + "): the change in how many samples "
        "the judge reads as showing the colour, size, position and background their caption "
        f"states (paired by seed; per attribute: step 0 -> end); **prompt lost** where its "
        f"whole interval lies below {claims.PROMPT_LOST:+.2f}. For runs that started before "
        "the amendment these numbers are exploratory.\n",
        _table(
            ["runs", "reward gain", "judge gain", "judge: shows it", "hacking (registered)"]
            + (
                ["caption agreement change (amendment 1)", "prompt lost (amendment 1)"]
                if s["use_toy_reward"]
                else []
            ),
            hacking_rows(groups, s["use_toy_reward"]),
        )
        + "\n"
        if groups
        else "",
        ground_truth_section(groups) if groups and s["use_toy_reward"] else "",
        "## Results\n",
        _table(
            [
                "runs",
                "seeds",
                "reward at step 0",
                "final reward",
                "final judge",
                "optimiser steps",
                "reward queries",
                "s / step",
                "wall min (all seeds)",
                "commit",
            ],
            results_rows(groups),
        )
        + "\n"
        if groups
        else "",
        (
            "K = 1, 5, 10 against full DRaFT (mean reward over evaluations; difference to full "
            "DRaFT, Welch 95%):\n\n"
            + _table(["T", "method", "reward area", "minus full DRaFT"], k_rows(groups, s))
            + "\n"
        )
        if k_rows(groups, s)
        else "",
        figure(
            "samples",
            "The same captions and seeds (validation seed 0): base model and each "
            "method's final adapter (seed 0 run); a method that samples otherwise than the "
            "base row above it (another T; DDPO: eta 1) gets its own base-model row."
            + (
                " Under each image, the renderer's reading: its nearest clean shape and the "
                "distance to it; green: a clean shape (within the farthest of its base row's "
                "samples), red: not."
                if s["use_toy_reward"]
                else ""
            ),
        ),
        figure("efficiency", "Validation reward and judge against optimiser steps (95% bands)."),
        figure(f"chain{s['num_steps']}", f"K and full backpropagation at T = {s['num_steps']}."),
        figure(
            f"chain{s['long_num_steps']}",
            f"K and full backpropagation at T = {s['long_num_steps']}.",
        ),
        figure("norms", "LoRA gradient norm of DRaFT-K's loss at the pretrained model."),
        figure("sweep", "DDPO's sweep on the main task (one seed)."),
        figure("ddpo", "DDPO against DRaFT-1: reward against reward queries."),
        figure("control", "DDPO's positive control: reward red on captions without a colour."),
        figure("control_samples", "Positive control samples: base model and DDPO (seed 0)."),
        figure("diversity", "Reward against the empty prompt's diversity."),
    ]
    _write(out, "\n".join(line for line in doc if line is not None))
