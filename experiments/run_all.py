"""Run every experiment and write docs/experiments.md with its figures (`make experiments`).

    OMP_NUM_THREADS=2 .venv/bin/python -m experiments.run_all [--smoke] [--methods A,B]
        [--seeds 0,1,2]

Each finished run is cached in .cache/experiments/ (keyed by its settings and the weights of
the toy model and classifier), so an interrupted `make experiments` resumes where it
stopped, a rerun with everything cached only rewrites the doc, and a new `make toy` starts
afresh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from experiments.methods import Method, draftp_name, select
from experiments.settings import ExperimentSettings, smoke

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "experiments"
DOC = ROOT / "docs" / "experiments.md"
FIGURES = ROOT / "docs" / "images" / "experiments"
COMMAND = "make experiments  (OMP_NUM_THREADS=2 .venv/bin/python -m experiments.run_all)"
FINISHED: list[float] = []  # when each run this report uses finished (its cache file's time)


def resolve_paths(settings: ExperimentSettings) -> ExperimentSettings:
    """Absolute toy model and classifier folders, fixed before anything else is imported."""
    if not settings.use_toy_reward:
        return settings
    from draft_lightning.toy.paths import default_classifier_path, toy_sd_path

    return replace(
        settings,
        pretrained_model=settings.pretrained_model or str(toy_sd_path()),
        classifier=settings.classifier or str(default_classifier_path()),
    )


def weights_fingerprint(settings: ExperimentSettings) -> str:
    """Hash of the model's and classifier's weight files: the cache key names folders, and
    `make toy` rewrites the same folders with a different model."""
    digest = hashlib.sha1()
    for folder in (settings.pretrained_model, settings.classifier):
        if folder is None or not Path(folder).is_dir():
            continue  # a built-in tiny model: its name identifies it
        for path in sorted(Path(folder).rglob("*.safetensors")):
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# Read by the DDPO long run alone, which puts them in its key as ddpo_batches and its name:
# kept out of the other runs' keys, so changing them does not invalidate those runs.
LONG_RUN_FIELDS = ("ddpo_long_batches", "ddpo_long_seed", "ddpo_long_val_every")


def cache_key(kind: str, name: str, seed: int, settings: ExperimentSettings) -> str:
    """What identifies a run: its kind, name, seed, the settings it reads and the weights."""
    skip = ("seeds", "methods", *LONG_RUN_FIELDS)
    fields = {k: v for k, v in asdict(settings).items() if k not in skip}
    fields["weights"] = weights_fingerprint(settings)
    return json.dumps([kind, name, seed, fields], sort_keys=True, default=str)


def cached(
    cache: Path, kind: str, name: str, seed: int, settings: ExperimentSettings, compute
) -> dict:
    """Run `compute()` once per (kind, name, seed, settings); the result lives in CACHE
    (--cache), so a rerun or an interrupted run skips what is done."""
    key = cache_key(kind, name, seed, settings)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = cache / f"{kind}-{digest}.json"
    if path.is_file():
        FINISHED.append(path.stat().st_mtime)
        return json.loads(path.read_text())["result"]
    start = time.perf_counter()
    result = compute()
    print(f"  {kind} {name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}))
    tmp.replace(path)
    FINISHED.append(path.stat().st_mtime)
    return result


def run_everything(settings: ExperimentSettings, cache: Path = CACHE) -> dict:
    from experiments import run
    from experiments.methods import all_methods

    def every_seed(method: Method, kind: str = "train", **train_options) -> list[dict]:
        return [
            cached(
                cache,
                kind,
                method.name,
                seed,
                settings,
                lambda s=seed: run.train(settings, method, s, **train_options),
            )
            for seed in settings.seeds
        ]

    results: dict[str, list[dict]] = {}
    for method in select(settings.methods):
        scales = settings.lora_scales if method.name == "DRaFT-LV (n=2)" else ()
        results[method.name] = every_seed(method, lora_scales=scales)
    lv = next(m for m in all_methods() if m.name == "DRaFT-LV (n=2)")
    for kl_coeff in settings.kl_coeffs:
        results[draftp_name(kl_coeff)] = every_seed(
            Method(draftp_name(kl_coeff), lv.build), kl_coeff=kl_coeff
        )
    # DRaFT-LV again, with the empty prompt measured at every evaluation: what stopping
    # unregularised training early gives, to set the remedies' diversity against.
    early_stopping = every_seed(lv, "trajectory", unconditional_every_eval=True)
    norms: dict[str, list[float]] = {}
    for seed in settings.seeds:
        measured = cached(
            cache,
            "gradnorm",
            "DRaFT-K",
            seed,
            settings,
            lambda s=seed: run.gradient_norms(settings, s),
        )
        for k, values in measured.items():
            norms.setdefault(k, []).extend(values)
    # DDPO once more, longer, on one seed (last: the longest run): whether and when it gains.
    ddpo = next(m for m in all_methods() if m.ddpo)
    long_settings = replace(settings, ddpo_batches=settings.ddpo_long_batches)
    ddpo_long = None
    if ddpo.name in results and settings.ddpo_long_batches > 0:
        ddpo_long = cached(
            cache,
            "ddpo-long",
            f"{ddpo.name}, evaluated every {settings.ddpo_long_val_every} batches",
            settings.ddpo_long_seed,
            long_settings,
            lambda: run.train(
                long_settings, ddpo, settings.ddpo_long_seed, val_every=settings.ddpo_long_val_every
            ),
        )
    return {
        "settings": asdict(settings),
        "results": results,
        "early_stopping": early_stopping,
        "ddpo_long": ddpo_long,
        "gradient_norms": norms,
    }


def seed_list(text: str) -> tuple[int, ...]:
    """--seeds: a bad list becomes argparse's one-line usage error (exit 2)."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 0,1,2)"
        ) from None
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds must be >= 0")
    return seeds


def batches(text: str) -> int:
    """--ddpo-long-batches: a count >= 0, or a one-line usage error."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of batches (an integer >= 0)")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model, seconds")
    parser.add_argument("--methods", help="comma-separated subset of the methods")
    parser.add_argument("--seeds", type=seed_list, help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--ddpo-long-batches",
        type=batches,
        default=0,
        help="also train DDPO on one seed for this many batches of 32 (default 0: not run)",
    )
    parser.add_argument("--out", type=Path, default=DOC, help="where to write the doc")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where the PNGs go")
    parser.add_argument("--cache", type=Path, default=CACHE, help="finished runs (resume)")
    args = parser.parse_args()
    settings = smoke() if args.smoke else ExperimentSettings()
    if args.methods:
        settings = replace(settings, methods=tuple(args.methods.split(",")))
    if args.ddpo_long_batches:
        settings = replace(settings, ddpo_long_batches=args.ddpo_long_batches)
    if args.seeds:
        settings = replace(settings, seeds=args.seeds)
    settings = resolve_paths(settings)
    start = time.perf_counter()
    everything = run_everything(settings, args.cache)
    everything["seconds"] = time.perf_counter() - start
    everything["finished"] = (min(FINISHED), max(FINISHED))
    from experiments.report import write_report

    write_report(everything, args.out, args.figures, COMMAND + (" --smoke" if args.smoke else ""))
    print(f"wrote {args.out} in {everything['seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
