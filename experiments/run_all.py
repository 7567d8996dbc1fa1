"""Run the registered experiments and write docs/experiments.md (`make experiments`).

    OMP_NUM_THREADS=2 .venv/bin/python -m experiments.run_all [--part all|efficiency|chain|ddpo]
        [--report-only] [--smoke] [--seeds 0,1,2,3,4] [--extra-methods A,B]

Each finished run is cached in .cache/experiments/ (keyed by its RunSpec, the shared settings
and the weights of the toy model and classifier), so an interrupted part resumes where it
stopped, parts run on different days add up, and a new toy model starts afresh. A run in
progress keeps a checkpoint after every optimiser step in .cache/experiments/partial/, so a
run cut short (the end of a session, a kill) resumes at its last step, not from the start. Whatever
part ran, the report is written from every cached run of the plan; a claim whose runs are
missing says which part to run.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO

from experiments import claims, plan
from experiments.methods import check_extra
from experiments.settings import ExperimentSettings, RunSpec, smoke

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "experiments"
DOC = ROOT / "docs" / "experiments.md"
FIGURES = ROOT / "docs" / "images" / "experiments"
COMMAND = "OMP_NUM_THREADS=2 .venv/bin/python -m experiments.run_all"


def resolve_paths(settings: ExperimentSettings) -> ExperimentSettings:
    """Absolute toy model and classifier folders (the newest of `make toy`'s and the ones
    shipped in the package), fixed before any run."""
    if not settings.use_toy_reward:
        return settings
    from draft_lightning.toy.paths import toy_classifier_path, toy_sd_path

    return replace(
        settings,
        pretrained_model=settings.pretrained_model or str(toy_sd_path()),
        classifier=settings.classifier or str(toy_classifier_path()),
    )


def weights_fingerprint(settings: ExperimentSettings) -> str:
    """Hash of the model's, classifier's and judge's weight files: the cache key names
    folders, and `make toy` rewrites the same folders with a different model."""
    judge = None
    if settings.use_toy_reward:
        from draft_lightning.toy.paths import toy_judge_path

        judge = str(toy_judge_path())
    digest = hashlib.sha1()
    for folder in (settings.pretrained_model, settings.classifier, judge):
        if folder is None or not Path(folder).is_dir():
            continue  # a built-in tiny model: its name identifies it
        for path in sorted(Path(folder).rglob("*.safetensors")):
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def portable(shared: dict) -> dict:
    """The shared settings as a key: a model or classifier folder is named by its weights
    (the fingerprint), not by where the checkout lies, so a moved or second checkout finds
    the same runs."""
    return {
        name: "folder"
        if name in ("pretrained_model", "classifier") and Path(str(value)).is_dir()
        else value
        for name, value in shared.items()
    }


class Cache:
    """Finished runs on disk, one JSON file per key (written atomically)."""

    def __init__(self, folder: Path, settings: ExperimentSettings) -> None:
        self.folder = folder
        self.shared = portable(settings.shared()) | {"weights": weights_fingerprint(settings)}
        self.ran: list[str] = []  # what this invocation computed

    def key(self, kind: str, what: dict) -> str:
        return json.dumps([kind, what, self.shared], sort_keys=True, default=str)

    def path(self, kind: str, what: dict) -> Path:
        digest = hashlib.sha1(self.key(kind, what).encode()).hexdigest()[:16]
        return self.folder / f"{kind}-{digest}.json"

    def get(self, kind: str, what: dict) -> dict | None:
        path = self.path(kind, what)
        return json.loads(path.read_text())["result"] if path.is_file() else None

    def partial(self, kind: str, what: dict) -> Path:
        """Where an unfinished computation keeps its checkpoints (removed once cached)."""
        return self.folder / "partial" / self.path(kind, what).stem

    def claim(self, kind: str, what: dict) -> IO | None:
        """Lock a computation for this process (None: another process holds it). Parts may run
        side by side and share runs (the chain part's DRaFT-1 is the efficiency part's): one
        process trains a run and owns its partial folder. The lock goes with the process,
        however it ends."""
        lock = self.partial(kind, what).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "w")  # noqa: SIM115 - held until the run is cached
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def get_or_run(self, kind: str, what: dict, compute, label: str) -> dict | None:
        """The cached result, else `compute(partial_folder)`'s, cached; None if another
        process is computing it now."""
        found = self.get(kind, what)
        if found is not None:
            return found
        lock = self.claim(kind, what)
        if lock is None:
            print(f"  {label}: another process is training it; skipped", flush=True)
            return None
        try:
            found = self.get(kind, what)  # finished by another process meanwhile
            if found is not None:
                return found
            start = time.perf_counter()
            partial = self.partial(kind, what)
            result = compute(partial)
            resumed = " (resumed)" if isinstance(result, dict) and result.get("resumed") else ""
            print(f"  {label}: {time.perf_counter() - start:.0f} s{resumed}", flush=True)
            path = self.path(kind, what)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": self.key(kind, what), "result": result}))
            tmp.replace(path)
            shutil.rmtree(partial, ignore_errors=True)
            Path(lock.name).unlink(missing_ok=True)
            self.ran.append(label)
            return result
        finally:
            lock.close()


def spec_key(spec: RunSpec) -> dict:
    return asdict(spec)


def norm_key(settings: ExperimentSettings, seed: int, num_steps: int) -> dict:
    ks = settings.grad_norm_ks(num_steps)
    return {
        "seed": seed,
        "num_steps": num_steps,
        "ks": ks,
        "batches": settings.grad_norm_batches,
        "batch_size": settings.batch_size,
    }


def sweep_choice(settings: ExperimentSettings, cache: Cache) -> tuple[float, float] | None:
    """The sweep's (lr, clip) with the highest final validation reward gain; None until the
    whole sweep is cached."""
    gains = {}
    for spec in plan.sweep_runs(settings):
        result = cache.get("train", spec_key(spec))
        if result is None:
            return None
        gains[(spec.ddpo_lr, spec.ddpo_clip)] = claims.reward_gain(result)
    return max(gains, key=gains.get)


def run_part(part: str, settings: ExperimentSettings, cache: Cache) -> None:
    from experiments import run

    def train(spec: RunSpec) -> None:
        label = f"{spec.label} seed {spec.seed}"
        cache.get_or_run(
            "train", spec_key(spec), lambda partial: run.train(settings, spec, partial), label
        )

    print(f"[experiments] part {part}", flush=True)
    if part == "efficiency":
        for spec in plan.efficiency_runs(settings):
            train(spec)
    elif part == "chain":
        for spec in plan.chain_runs(settings):
            train(spec)
        for num_steps in plan.gradient_norm_lengths(settings):
            for seed in settings.seeds:
                cache.get_or_run(
                    "gradnorm",
                    norm_key(settings, seed, num_steps),
                    lambda _, s=seed, t=num_steps: run.gradient_norms(settings, s, t),
                    f"gradient norms T={num_steps} seed {seed}",
                )
    elif part == "ddpo":
        for spec in plan.sweep_runs(settings):
            train(spec)
        choice = sweep_choice(settings, cache)
        if choice is None:  # a sweep run is another process's: the rest waits for its choice
            print("  DDPO's sweep is not complete: the runs after it wait for it", flush=True)
            return
        for spec in plan.ddpo_runs(settings, choice):
            train(spec)


def train_parts(parts: tuple[str, ...], settings: ExperimentSettings, cache: Cache) -> None:
    """Run the parts; SIGTERM or SIGINT (a session's end, `kill`, Ctrl+C) stops them in one
    line with the shell's status for the signal, never 0 (Lightning's own SIGTERM handling
    exits 0): the run in progress stops at a step boundary with its checkpoint."""
    from draft_lightning.training.stop_signals import CommandSignals, RunInterrupted

    try:
        with CommandSignals():
            for part in parts:
                run_part(part, settings, cache)
    except RunInterrupted as stop:
        print(
            f"stopped by {signal.Signals(stop.signum).name}: {len(cache.ran)} runs finished and "
            f"cached now; a training run in progress resumes from its last checkpoint "
            f"({cache.folder / 'partial'}) when the part runs again (a gradient-norm "
            "measurement starts over)",
            file=sys.stderr,
        )
        raise SystemExit(stop.exit_status) from None


def collect(settings: ExperimentSettings, cache: Cache) -> dict:
    """Every cached run of the plan, grouped by label (lists over seeds, complete groups
    only), with the gradient norms and the DDPO sweep."""
    specs = plan.efficiency_runs(settings) + plan.chain_runs(settings)
    choice = sweep_choice(settings, cache)
    sweep = {s.label: cache.get("train", spec_key(s)) for s in plan.sweep_runs(settings)}
    if choice is not None:
        specs += plan.ddpo_runs(settings, choice)
    groups: dict[str, list[tuple[RunSpec, dict | None]]] = {}
    for spec in specs:  # DRaFT-1 at T = num_steps is in two parts: counted once
        runs = groups.setdefault(spec.label, [])
        if all(known != spec for known, _ in runs):
            runs.append((spec, cache.get("train", spec_key(spec))))
    complete = {
        label: [result for _, result in runs]
        for label, runs in groups.items()
        if all(result is not None for _, result in runs)
    }
    missing = {
        label: sum(result is None for _, result in runs)
        for label, runs in groups.items()
        if label not in complete
    }
    norms = {}
    for num_steps in plan.gradient_norm_lengths(settings):
        found = [cache.get("gradnorm", norm_key(settings, s, num_steps)) for s in settings.seeds]
        if all(found):
            norms[num_steps] = found
    return {
        "settings": asdict(settings),
        "parts": part_times(settings, cache, choice),
        "groups": complete,
        "missing": missing,
        "norms": norms,
        "sweep": sweep,
        "choice": choice,
    }


def part_times(
    settings: ExperimentSettings, cache: Cache, choice: tuple[float, float] | None
) -> dict[str, dict]:
    """Per part: runs planned, runs cached, and the wall seconds the cached ones took (the
    figures a person needs to decide which part to run when)."""
    lengths = plan.gradient_norm_lengths(settings)
    efficiency = plan.efficiency_runs(settings)
    planned: dict[str, list[tuple[str, dict] | None]] = {
        "efficiency": [("train", spec_key(s)) for s in efficiency],
        "chain": [("train", spec_key(s)) for s in plan.chain_runs(settings) if s not in efficiency]
        + [("gradnorm", norm_key(settings, seed, t)) for t in lengths for seed in settings.seeds],
        "ddpo": [("train", spec_key(s)) for s in plan.sweep_runs(settings)]
        + (  # the runs after the sweep are known once it chose (control + main per seed)
            [("train", spec_key(s)) for s in plan.ddpo_runs(settings, choice)]
            if choice is not None
            else [None] * (2 * len(settings.seeds))
        ),
    }
    times = {}
    for part, keys in planned.items():
        found = [cache.get(*key) for key in keys if key is not None]
        found = [result for result in found if result is not None]
        times[part] = {
            "planned": len(keys),
            "cached": len(found),
            "seconds": sum(r.get("wall_seconds", 0.0) for r in found),
        }
    return times


def seed_list(text: str) -> tuple[int, ...]:
    """--seeds: a bad list becomes argparse's one-line usage error (exit 2)."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 0,1,2,3,4)"
        ) from None
    if any(seed < 0 for seed in seeds) or len(seeds) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two seeds, each >= 0")
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", *plan.PARTS), default="all")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, seconds")
    parser.add_argument("--seeds", type=seed_list, help="comma-separated seeds (default 0-4)")
    parser.add_argument("--extra-methods", help="context runs beside DRaFT-1 (e.g. ReFL)")
    parser.add_argument("--out", type=Path, default=DOC, help="where to write the doc")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where the PNGs go")
    parser.add_argument("--cache", type=Path, default=CACHE, help="finished runs (resume)")
    args = parser.parse_args()
    settings = smoke() if args.smoke else ExperimentSettings()
    if args.seeds:
        settings = replace(settings, seeds=args.seeds)
    if args.extra_methods:
        extra = tuple(args.extra_methods.split(","))
        check_extra(extra)
        settings = replace(settings, extra_methods=extra)
    settings = resolve_paths(settings)
    cache = Cache(args.cache, settings)
    start = time.perf_counter()
    if not args.report_only:
        train_parts(plan.PARTS if args.part == "all" else (args.part,), settings, cache)
    everything = collect(settings, cache)
    everything["seconds"] = time.perf_counter() - start
    from experiments.report import write_report

    command = COMMAND + (" --smoke" if args.smoke else "")
    write_report(everything, args.out, args.figures, command)
    print(f"wrote {args.out} ({len(cache.ran)} runs trained now)", file=sys.stderr)


if __name__ == "__main__":
    main()
