"""Shared fixtures: every test runs on the tiny SD model, built once into a repo-local cache
and loaded through the same from_pretrained path a real checkpoint uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# PYTHONPATH for CLI subprocesses: tests/ (callback plug-ins) before whatever is set already.
TEST_PATH = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
# Set before anything imports draft_lightning.cache, and inherited by CLI subprocesses.
os.environ.setdefault("DRAFT_LIGHTNING_CACHE", str(ROOT / ".cache" / "draft_lightning"))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Under pytest-xdist (`make test` runs two workers on a 2-core machine) each worker computes
# on one thread: two workers of two OpenMP threads each would oversubscribe the cores, and
# spin-waiting threads then run many times slower. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_sd() -> Path:
    from draft_lightning.testing.tiny_sd import tiny_sd_path

    return tiny_sd_path()


def make_module(**overrides):
    """A DraftModule on the tiny model with small, fast sampling settings."""
    from draft_lightning.estimators import DraftK
    from draft_lightning.module import DraftModule
    from draft_lightning.rewards import Colorfulness
    from draft_lightning.samplers.settings import SamplingSettings

    kwargs = dict(
        reward=Colorfulness(),
        pretrained_model="tiny:sd",
        estimator=DraftK(1),
        sampling=SamplingSettings(num_steps=4, guidance_scale=3.0, resolution=32),
    )
    kwargs.update(overrides)
    return DraftModule(**kwargs)


class NoGradStandIn:
    """The eager denoiser put where the sampler keeps its compiled graph, counting the calls
    made through it: it takes the compiled paths (the no-grad steps, and the discarded
    forward of each differentiated call, samplers/recompute.py) without torch.compile's
    minutes of compiling, so the gradient tests can check those paths against references."""

    def __init__(self, denoiser) -> None:
        self.denoiser = denoiser
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.denoiser(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.denoiser, name)


def stand_in_for_compiled(module) -> NoGradStandIn:
    """Install a NoGradStandIn as `module`'s compiled denoiser (undo: sampler.compiled = None)."""
    stand_in = NoGradStandIn(module.pipeline.denoiser)
    module.sampler.compiled = stand_in
    return stand_in
