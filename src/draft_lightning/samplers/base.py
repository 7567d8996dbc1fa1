"""The sampling loop with a gradient window, written once for every sampler.

Steps before the window run under torch.no_grad (no graph is built at all, which is what
makes DRaFT-K cheap); the latent entering the window is detached; every denoiser call inside
the window is gradient-checkpointed so only its inputs are kept for the backward pass. A
sampler kind (ddim.py, flow_match_euler.py) supplies its timesteps, its update rule, the
forward process that re-noises a clean sample, and the x0 prediction; estimators talk to
this interface only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from draft_lightning.models.guided_halves import halves_repeated
from draft_lightning.randomness import StepRandomness
from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.samplers.recompute import (
    carries_gradient,
    dropout_active,
    recompute_in_backward,
)
from draft_lightning.samplers.settings import SamplingSettings


class DenoiserCall(Protocol):
    """One call of a family's denoiser: (module, latents, timestep, inputs) -> prediction."""

    def __call__(
        self, denoiser: nn.Module, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict
    ) -> torch.Tensor: ...


class StepObserver(Protocol):
    """Told about every differentiated step (DRaFT+'s penalty is one)."""

    def __call__(
        self,
        sampler: Sampler,
        latents: torch.Tensor,
        index: int,
        text: Conditioning,
        prediction: torch.Tensor,
        in_window: torch.Tensor | None,
    ) -> None: ...


@dataclass
class SampleResult:
    """Where sampling stopped: the latent after the last step run, and that step's x0 prediction."""

    latents: torch.Tensor
    pred_x0: torch.Tensor


class Sampler(ABC):
    """A sampler with guidance and a gradient window.

    `sample(..., grad_from=g)` runs steps [start, g) without autograd and steps [g, stop) with
    it; `g` may be one index per sample (AlignProp's random truncation), in which case each
    sample's latent is detached where its own window starts.

    Args:
        denoiser: the model (UNet or transformer) with its LoRA adapter.
        call: the family's way of calling it (inputs, timestep format, packing).
        settings: steps, guidance and resolution.
        gradient_checkpointing: recompute each differentiated call in the backward pass.
        no_grad_context: entered around the steps taken without gradient (e.g. LoRA merged
            into the base weights; see models/lora.py); None: nothing.
        compile_denoiser: run the calls made without gradient through torch.compile, and
            the discarded forward of each checkpointed differentiated call (recompute.py).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        call: DenoiserCall,
        settings: SamplingSettings,
        gradient_checkpointing: bool = True,
        no_grad_context: Callable[[], AbstractContextManager] | None = None,
        compile_denoiser: bool = False,
    ) -> None:
        self.denoiser = denoiser
        self.call = call
        self.settings = settings
        self.gradient_checkpointing = gradient_checkpointing
        self.no_grad_context = no_grad_context
        # Calls without gradient go through torch.compile (compiled on first use).
        self.compiled = torch.compile(denoiser) if compile_denoiser else None
        self._observer: StepObserver | None = None

    # --- what a sampler kind supplies ----------------------------------------------------

    @property
    @abstractmethod
    def num_steps(self) -> int:
        """Sampling steps in the chain."""

    @abstractmethod
    def timestep(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        """The timestep the denoiser is given at step `index` (its scheduler's scale)."""

    @abstractmethod
    def update(
        self,
        latents: torch.Tensor,
        index: int,
        prediction: torch.Tensor,
        rng: StepRandomness | None,
        copies: int,
    ) -> SampleResult:
        """One step of the chain from the (guided) model prediction at step `index`."""

    @abstractmethod
    def renoise(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        """The forward process: a clean sample noised to the level step `index` starts from."""

    # --- continuous noise levels (Direct-Align) -------------------------------------------
    # A level is the flow-matching noise fraction sigma in [0, 1]: a latent at level sigma is
    # (1 - sigma) * x0 + sigma * eps up to a scale. Kinds that can call their denoiser at any
    # level (not only at the chain's steps) supply these four.

    def snap_level(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest level this sampler's denoiser can be called at (per row)."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous noise levels")

    def level_timestep(self, sigma: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The timesteps the denoiser is given at (snapped) levels `sigma`, one per row."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous noise levels")

    def noise_to_level(
        self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """The forward process: clean latents noised to (snapped) levels `sigma`, per row."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous noise levels")

    def recover_x0(
        self,
        latents: torch.Tensor,
        prediction: torch.Tensor,
        noise: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
    ) -> torch.Tensor:
        """Direct-Align's clean latent: one step of the model's prediction from level `sigma`
        to `sigma_next`, then the noise still left at `sigma_next` (known: `noise` made the
        latent) removed in closed form."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous noise levels")

    def predict_at_level(
        self, latents: torch.Tensor, sigma: torch.Tensor, text: Conditioning
    ) -> torch.Tensor:
        """The guided prediction at (snapped) levels `sigma`, checkpointed when differentiated."""
        timestep = self.level_timestep(sigma, latents)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            call = partial(self.guided_at, timestep=timestep, text=text)
            return self.checkpointed(call, latents, timestep, text)
        return self.guided_at(latents, timestep, text)

    # --- the shared machinery ------------------------------------------------------------

    @contextmanager
    def observing(self, observer: StepObserver) -> Iterator[StepObserver]:
        """While active, `observer` sees every differentiated step's prediction."""
        self._observer = observer
        try:
            yield observer
        finally:
            self._observer = None

    def predict(self, latents: torch.Tensor, index: int, text: Conditioning) -> torch.Tensor:
        """The guided model output at step `index`, checkpointed when differentiated."""
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self.checkpointed(partial(self.guided, index=index, text=text), latents, text)
        return self.guided(latents, index, text)

    def checkpointed(
        self, call: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, *closed_over
    ) -> torch.Tensor:
        """`call(latents)` with only its inputs kept for backward, where it is recomputed.
        With a compiled denoiser the discarded forward runs through the compiled no-grad
        graph (recompute.py), unless a call draws random numbers (dropout) or what it closes
        over (text inputs, timesteps) carries gradient; otherwise torch's checkpoint runs it
        eagerly."""
        fast = self.compiled is not None and not dropout_active(self.denoiser)
        if fast and not carries_gradient(closed_over):
            trainable = [p for p in self.denoiser.parameters() if p.requires_grad]
            return recompute_in_backward(call, latents, trainable)
        return checkpoint(call, latents, use_reentrant=False)

    def guided(self, latents: torch.Tensor, index: int, text: Conditioning) -> torch.Tensor:
        """Classifier-free guidance with cond and uncond in one batch, or one plain call."""
        return self.guided_at(latents, self.timestep(index, latents), text)

    def guided_at(
        self, latents: torch.Tensor, timestep: torch.Tensor, text: Conditioning
    ) -> torch.Tensor:
        """`guided` at a timestep given directly (one value, or one per row)."""
        denoiser = self.denoiser
        if self.compiled is not None and not torch.is_grad_enabled():
            denoiser = self.compiled
        if text.uncond is None:
            return self.call(denoiser, latents, timestep, text.cond)
        if timestep.dim() == 1:  # one per row: the uncond rows take the same ones
            timestep = torch.cat([timestep, timestep])
        with halves_repeated(self.denoiser):  # uncond and cond rows share the latents
            both = self.call(
                denoiser, torch.cat([latents, latents]), timestep, text.with_uncond_first()
            )
        out_uncond, out_cond = both.chunk(2)
        return out_uncond + self.settings.guidance_scale * (out_cond - out_uncond)

    def step(
        self,
        latents: torch.Tensor,
        index: int,
        text: Conditioning,
        rng: StepRandomness | None = None,
        in_window: torch.Tensor | None = None,
    ) -> SampleResult:
        """Step `index`: predict, tell the observer (differentiated steps), update.

        `in_window` marks, per sample, whether this step is differentiated for it (None: all).
        """
        prediction = self.predict(latents, index, text)
        if self._observer is not None and torch.is_grad_enabled():
            self._observer(self, latents, index, text, prediction, in_window)
        return self.update(latents, index, prediction, rng, text.copies)

    def sample(
        self,
        latents: torch.Tensor,
        text: Conditioning,
        grad_from: int | torch.Tensor,
        rng: StepRandomness | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> SampleResult:
        """Run steps [start, stop) from `latents`; gradient flows only from step `grad_from` on.

        grad_from >= stop means no gradient at all; a tensor gives one window start per sample.
        """
        stop = self.num_steps if stop is None else stop
        per_sample = isinstance(grad_from, torch.Tensor)
        first_grad = int(grad_from.min()) if per_sample else grad_from
        if per_sample:
            grad_from = grad_from.to(latents.device).view(-1, *([1] * (latents.dim() - 1)))
        result = SampleResult(latents, latents)
        prefix_end = max(start, min(first_grad, stop))
        prefix: Any = nullcontext()
        if self.no_grad_context is not None and prefix_end > start:
            prefix = self.no_grad_context()
        with prefix:
            for index in range(start, prefix_end):
                with torch.no_grad():
                    result = self.step(result.latents, index, text, rng)
        for index in range(prefix_end, stop):
            x = result.latents
            in_window = None
            if per_sample:
                # Samples whose window has not opened yet (or opens now) enter detached.
                x = torch.where(index <= grad_from, x.detach(), x)
                in_window = (index >= grad_from).flatten().to(x.dtype)
            elif index == first_grad:
                x = x.detach()
            result = self.step(x, index, text, rng, in_window)
        return result
