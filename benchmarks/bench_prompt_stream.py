"""Time-to-first-batch and memory of the prompt stream on a large prompt file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prompt_stream.py [--lines 1000000]

Writes a synthetic file of LINES prompts (.txt or .jsonl) into a temporary folder, then measures,
in this one process: the start-up scan (PromptDataModule with scan_files on and off), the time
from iter() to the first batch, one full pass over every prompt, and memory: the growth of peak
RSS during that pass and the peak of Python allocations (tracemalloc, a second pass), for the
full file and for a file a tenth its size (flat memory means the two match).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from draft_lightning.data import PromptDataModule

WORDS = (
    "a photo of an astronaut riding horse on mars highly detailed 8k trending on artstation oil "
    "painting portrait cat dog castle sunset forest neon city"
)


def write_file(path: Path, lines: int, fmt: str) -> None:
    rng = random.Random(0)
    vocabulary = WORDS.split()
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            prompt = f"{i} " + " ".join(rng.choices(vocabulary, k=rng.randint(3, 30)))
            out.write(json.dumps({"prompt": prompt}) + "\n" if fmt == "jsonl" else prompt + "\n")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, batch_size: int, full_pass: bool) -> dict[str, float]:
    row: dict[str, float] = {}
    start = time.perf_counter()
    dm = PromptDataModule(str(path), batch_size=batch_size, scan_files=False)
    row["init_head_check_s"] = time.perf_counter() - start
    start = time.perf_counter()
    PromptDataModule(str(path), batch_size=batch_size, scan_files=True)
    row["init_full_scan_s"] = time.perf_counter() - start
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    start = time.perf_counter()
    next(batches)
    row["first_batch_s"] = time.perf_counter() - start
    if full_pass:
        steps = sum(1 for _ in path.open("rb")) // batch_size
        rss_before = peak_rss_mib()
        start = time.perf_counter()
        for _ in itertools.islice(iter(dm.train_dataloader()), steps):
            pass
        row["full_pass_s"] = time.perf_counter() - start
        row["pass_rss_growth_mib"] = peak_rss_mib() - rss_before
        tracemalloc.start()
        for _ in itertools.islice(iter(dm.train_dataloader()), steps):
            pass
        row["pass_python_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    row["peak_rss_mib"] = peak_rss_mib()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["txt", "jsonl"], default="txt")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-pass", action="store_true", help="skip the full pass")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for lines in (args.lines // 10, args.lines):
            path = Path(tmp) / f"prompts_{lines}.{args.format}"
            write_file(path, lines, args.format)
            size = path.stat().st_size / 2**20
            row = measure(path, args.batch_size, not args.no_pass)
            shown = "  ".join(f"{k}={v:.3f}" for k, v in row.items())
            print(f"{lines:>9} lines ({size:.0f} MiB, .{args.format}): {shown}", flush=True)


if __name__ == "__main__":
    main()
