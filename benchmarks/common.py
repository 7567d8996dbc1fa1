"""Shared helpers for the benchmarks: machine facts, an alternating timer, memory meters,
markdown tables and atomic writes.

Timings on a shared 2-core CPU drift by +-25% between runs, so every comparison runs its
variants in one process, alternating, and is reported as a ratio; memory is measured as
bytes (saved by autograd, or allocated at the peak), which do not drift.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from draft_lightning.source_commit import source_commit

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DRAFT_LIGHTNING_CACHE", str(ROOT / ".cache" / "draft_lightning"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", message=".*self.log.*")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*eval mode.*")
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)

PROMPTS = ("a photo of a cat", "a painting of a dog", "a red car", "a castle at sunset")
MiB = 2**20


@dataclass
class Section:
    """One part of docs/benchmarks.md: its tables and notes, plus the raw numbers."""

    title: str
    command: str
    body: str
    data: dict = field(default_factory=dict)


# --- the machine -------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """What a reader needs to reproduce a table: CPU, cores, threads, versions, date, load."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1min": f"{os.getloadavg()[0]:.2f}",
    }


def commit() -> str:
    """The measured code's short commit hash, marked `-dirty` with uncommitted changes to
    tracked files other than docs/benchmarks.md (which `make bench` itself rewrites, table by
    table, so a run after a killed or partial one is not marked for it)."""
    return source_commit(ROOT, not_changes=["docs/benchmarks.md"]) or "unknown (not a git checkout)"


HEAVY = ("pytest", "lightning fit", "bench", "experiments")


def busy_processes() -> list[str]:
    """Other heavy processes (tests, training runs, benchmarks) that would skew timings;
    this process's ancestors (make, pytest) and descendants (its workers) do not count."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    rows = {}
    for line in out.splitlines():
        pid, ppid, *args = line.split(None, 2)
        rows[int(pid)] = (int(ppid), args[0] if args else "")
    family = {os.getpid()}
    pid = os.getpid()
    while pid in rows and rows[pid][0] not in family and rows[pid][0] > 1:
        pid = rows[pid][0]
        family.add(pid)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in rows.items():
            if ppid in family and pid not in family:
                family.add(pid)
                changed = True
    return [
        f"{pid} {args[:80]}"
        for pid, (_, args) in rows.items()
        if pid not in family and "ps -eo" not in args and any(word in args for word in HEAVY)
    ]


def wait_until_quiet(max_wait_s: float, poll_s: float = 20.0) -> str:
    """Wait (up to max_wait_s) until no other heavy process runs; say what was found."""
    start = time.monotonic()
    while True:
        busy = busy_processes()
        if not busy:
            return "quiet"
        if time.monotonic() - start >= max_wait_s:
            return f"NOT quiet after {max_wait_s:.0f} s wait: " + "; ".join(busy[:3])
        time.sleep(poll_s)


# --- timing ------------------------------------------------------------------------------


def alternate(
    variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each variant, measured in rounds that alternate the variants (the
    order rotates each round) so slow drift of a shared machine hits all of them alike."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], name: str, baseline: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of time(name) / time(baseline) in the same round."""
    per_round = [a / b for a, b in zip(times[name], times[baseline], strict=True)]
    return statistics.median(per_round), min(per_round), max(per_round)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# --- memory ------------------------------------------------------------------------------


class SavedTensors:
    """Bytes autograd saves for backward, seen through saved_tensors_hooks.

    `total` counts every save (a tensor saved twice counts twice); `live()` counts distinct
    storages still alive, i.e. the activation memory held at that moment (a graph that was
    built and then freed, like a detached prefix, no longer counts). Checkpointed calls keep
    only their inputs, which non-reentrant checkpointing holds outside these hooks.
    """

    def __init__(self) -> None:
        self.total = 0
        self._refs: list[weakref.ref] = []

    def _pack(self, tensor):
        self.total += tensor.numel() * tensor.element_size()
        self._refs.append(weakref.ref(tensor))
        return tensor

    @contextmanager
    def recording(self) -> Iterator[SavedTensors]:
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    def live(self) -> int:
        storages: dict[int, int] = {}
        for ref in self._refs:
            tensor = ref()
            if tensor is not None and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


def peak_allocated(fn: Callable[[], object]) -> tuple[object, int]:
    """Run fn under the profiler's memory view; return its result and the peak of tensor
    bytes allocated above the level at its start (the CPU analogue of a GPU's
    max_memory_allocated minus the memory held before the step). The same count as the
    plan's check (planning/measure.py): frees of blocks allocated before fn are left out."""
    from draft_lightning.planning.measure import measured_peak

    results: list[object] = []
    peak = measured_peak(lambda: results.append(fn()), resident=0)
    return results[0], peak


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def module_bytes(*modules) -> int:
    """Bytes of parameters and buffers: what a GPU holds before the first step."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


# --- the model under test -----------------------------------------------------------------


def build_module(
    resolution: int = 64,
    num_steps: int = 50,
    estimator=None,
    guidance_scale: float = 7.5,
    **overrides,
):
    """A DraftModule on the built-in tiny SD with the brightness reward (weight-free, so the
    reward costs next to nothing and the sampler dominates, as it does at paper scale)."""
    from draft_lightning.estimators import DraftK
    from draft_lightning.module import DraftModule
    from draft_lightning.rewards import Brightness
    from draft_lightning.samplers.settings import SamplingSettings

    return DraftModule(
        reward=Brightness(),
        pretrained_model="tiny:sd",
        estimator=estimator if estimator is not None else DraftK(1),
        sampling=SamplingSettings(
            num_steps=num_steps, guidance_scale=guidance_scale, resolution=resolution
        ),
        **overrides,
    )


def prompts(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


def train_step(module, optimizer, batch: int, batch_idx: int = 0, clip: float = 1.0) -> float:
    """What Lightning's automatic optimisation does per step, without the Trainer: the
    module's training_step, backward, gradient clipping, optimiser step, zero_grad."""
    import torch

    loss = module.training_step({"prompts": prompts(batch)}, batch_idx)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# --- output --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ratio(stats: tuple[float, float, float]) -> str:
    mid, low, high = stats
    return f"{mid:.2f} ({low:.2f}-{high:.2f})"


def mib(nbytes: float) -> str:
    return f"{nbytes / MiB:.2f}"


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename over it, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the doc from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
