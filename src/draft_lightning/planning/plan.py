"""Will it fit? One training step of a configured run, planned without weights.

The module is built from the same config files as `lightning fit` (inside `weightless()`: real
architectures on the meta device), then one step runs through the package's own code:
`DraftModule.training_step` (sampling with the estimator's gradient window and the configured
checkpointing, decode, reward), backward, and the optimiser's step. Live storages are summed op
by op (tracker.py) and FLOPs counted by torch.utils.flop_counter. Attention is counted as the
fused kernels run it on an accelerator (q, k, v, output and a per-row logsumexp kept; no
N x N matrix), which is what torch's math fallback on the meta device would not do.
"""

from __future__ import annotations

import re
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F

from draft_lightning.errors import ConfigError
from draft_lightning.planning.repeated_steps import repeated_no_grad_steps
from draft_lightning.planning.tracker import LiveMemory, Peak

PROMPT = "a photograph of an animal"
GIB = 2**30
UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory(text: str) -> int:
    """'24GiB', '80GB', '48 GiB', '1.5TB' -> bytes; anything else is a ConfigError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", text or "")
    unit = match and UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ConfigError(
            f"--memory={text!r} is not a size like 24GiB or 80GB (units: B, KB, MB, GB, TB, "
            "KiB, MiB, GiB, TiB)"
        )
    size = int(float(match.group(1)) * unit)
    if size <= 0:
        raise ConfigError(f"--memory={text!r} must be larger than 0 (a size like 24GiB)")
    return size


@dataclass
class StepPlan:
    """One planned training step."""

    batch: int
    peak: Peak
    flops: int
    seconds: float  # wall time the plan took

    @property
    def peak_bytes(self) -> int:
        return self.peak.bytes


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
    """SDPA as a fused kernel keeps it (FlashAttention on a GPU, its CPU port here): only the
    output and a logsumexp per row are saved. On the meta device torch would otherwise
    decompose it into the math path, which materialises the N x N attention matrix."""
    if query.device.type != "meta" or attn_mask is not None:
        return _sdpa(query, key, value, attn_mask, dropout_p, is_causal, **kw)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, scale=kw.get("scale")
    )[0]


_sdpa = F.scaled_dot_product_attention


@contextmanager
def staying(module, device):
    """`offload_text_encoders` on the meta device: the encoders are not part of the module's
    accelerator memory (they live on the host), so the plan leaves them where they are."""
    yield module


@contextmanager
def accelerator_attention():
    """The step as it runs on an accelerator: fused attention, host-offloaded encoders."""
    from draft_lightning.models import pipeline

    with (
        mock.patch.object(F, "scaled_dot_product_attention", fused_attention),
        mock.patch.object(pipeline, "visiting", staying),
    ):
        yield


def make_optimizer(module) -> torch.optim.Optimizer:
    """The configured optimiser, with its state already created (as from the second step on):
    the plan is of a step in the middle of training, not of the first one."""
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    parameters = module.trainable_parameters()
    for parameter in parameters:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def real_autocast(device: torch.device, precision: str | None):
    """torch.autocast as Lightning's `precision` sets it, on a real device."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def training_step(
    module, optimizer: torch.optim.Optimizer, batch: int, precision: str | None = None
) -> torch.Tensor:
    """One optimisation step as Lightning runs it: zero_grad, training_step (under autocast
    with a mixed `precision`), backward, step."""
    from draft_lightning.planning.autocast import meta_autocast

    optimizer.zero_grad(set_to_none=True)
    device = module.pipeline.device
    meta = device.type == "meta"
    with (
        meta_autocast(precision) if meta else real_autocast(device, precision),
        warnings.catch_warnings(),
    ):
        # The step runs without a Trainer (nothing is fit): its self.log calls have nowhere
        # to go, which Lightning would warn about at every planned step.
        warnings.filterwarnings("ignore", message=r".*`self\.trainer` reference is not registered")
        loss = module.training_step({"prompts": [PROMPT] * batch}, 0)
        if meta:  # torch's checkpoint re-enters autocast for its recompute; the stand-in
            loss.backward()  # cannot be re-entered that way, so it stays on through backward
    if not meta:
        loss.backward()  # outside autocast, as Lightning runs it
    optimizer.step()
    return loss.detach()


def plan_step(
    module,
    optimizer: torch.optim.Optimizer,
    batch: int,
    precision: str | None = None,
    trace_every_step: bool = False,
) -> StepPlan:
    """Peak memory by role and FLOPs of one training step at `batch` prompts. The no-grad
    steps before the gradient window are traced twice and counted for the rest
    (repeated_steps.py) unless `trace_every_step`."""
    start = time.perf_counter()
    memory = LiveMemory()
    memory.add_module(module)
    memory.add_optimizer(optimizer)
    shortcut = nullcontext() if trace_every_step else repeated_no_grad_steps(module.sampler, memory)
    with accelerator_attention(), shortcut, memory:
        training_step(module, optimizer, batch, precision)
    return StepPlan(batch, memory.peak, memory.flops, time.perf_counter() - start)


@dataclass
class Fit:
    """Largest batch whose planned peak fits `memory` bytes (0: not even one prompt)."""

    memory: int
    largest_batch: int
    plan: StepPlan | None  # the plan at that batch


def largest_batch(
    module, optimizer, plans: list[StepPlan], memory: int, precision: str | None = None
) -> Fit:
    """The peak is close to affine in the batch (weights fixed, the rest per sample): solve
    from the first two plans, verify the candidate and the one above it with plans of their
    own, and bisect only if the fit was off. New plans are appended to `plans`, so a call for
    another memory size reuses them."""
    (small, large) = sorted(plans[:2], key=lambda p: p.batch)
    slope = max((large.peak_bytes - small.peak_bytes) / (large.batch - small.batch), 1.0)
    fixed = small.peak_bytes - slope * small.batch
    known = {plan.batch: plan for plan in plans}

    def fits(batch: int) -> bool:
        if batch not in known:
            known[batch] = plan_step(module, optimizer, batch, precision)
            plans.append(known[batch])
        return known[batch].peak_bytes <= memory

    if not fits(1):
        return Fit(memory, 0, None)
    guess = max(1, int((memory - fixed) // slope))
    low = max(b for b, plan in known.items() if plan.peak_bytes <= memory)  # fits
    high = min((b for b, plan in known.items() if plan.peak_bytes > memory), default=None)
    for batch in (guess, guess + 1):
        if batch <= low or (high is not None and batch >= high):
            continue  # already known
        if fits(batch):
            low = batch
        else:
            high = batch
            break
    while high is None:  # the guess was low: double until a batch does not fit
        if fits(low * 2):
            low *= 2
        else:
            high = low * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return Fit(memory, low, known[low])
