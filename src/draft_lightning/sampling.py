"""The differentiable DDIM sampler: prompt conditioning, guided noise prediction, one
scheduler step, and the sampling loop with a gradient window.

Steps before the window run under torch.no_grad (no graph is built at all, which is what
makes DRaFT-K cheap); the latent entering the window is detached; every UNet call inside
the window is gradient-checkpointed so only its inputs are kept for the backward pass.
The scheduler arithmetic is diffusers' own DDIMScheduler.step (epsilon and v-prediction).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from draft_lightning.errors import ConfigError
from draft_lightning.randomness import StepRandomness


@dataclass(frozen=True)
class SamplingSettings:
    """How images are sampled.

    Args:
        num_steps: DDIM sampling steps (the paper: 50).
        guidance_scale: classifier-free guidance weight; 1 means no unconditional pass.
        eta: DDIM eta; 0 is deterministic DDIM, 1 is DDPM-like ancestral noise.
        resolution: image height and width in pixels; must divide by the VAE's factor.
    """

    num_steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    resolution: int = 512

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"sampling.num_steps={self.num_steps} must be >= 1")
        if self.guidance_scale < 0:
            raise ConfigError(f"sampling.guidance_scale={self.guidance_scale} must be >= 0")
        if self.eta < 0:
            raise ConfigError(f"sampling.eta={self.eta} must be >= 0")
        if self.resolution < 1:
            raise ConfigError(f"sampling.resolution={self.resolution} must be >= 1")


@dataclass
class TextConditioning:
    """Text embeddings for guided sampling: conditional, and unconditional unless guidance is 1.

    `cond_added`/`uncond_added` are the UNet's extra conditioning inputs where the model
    family has them (SDXL: pooled text embedding and size/crop ids); None otherwise.
    """

    cond: torch.Tensor
    uncond: torch.Tensor | None
    copies: int = 1  # how many copies of each prompt the batch holds (copy-major)
    cond_added: dict[str, torch.Tensor] | None = None
    uncond_added: dict[str, torch.Tensor] | None = None

    def repeat(self, copies: int) -> TextConditioning:
        """The same prompts `copies` times, copy-major ([c0 prompts..., c1 prompts...])."""
        if copies == 1:
            return self
        return TextConditioning(
            _repeat(self.cond, copies),
            _repeat(self.uncond, copies),
            self.copies * copies,
            _repeat(self.cond_added, copies),
            _repeat(self.uncond_added, copies),
        )


def _repeat(value, copies: int):
    """Tensors (or a dict of them) stacked `copies` times along the batch dimension."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _repeat(v, copies) for key, v in value.items()}
    return value.repeat(copies, *([1] * (value.dim() - 1)))


@dataclass
class SampleResult:
    """Where sampling stopped: the latent after the last step run, and that step's x0 prediction."""

    latents: torch.Tensor
    pred_x0: torch.Tensor


@dataclass
class BaseDeviation:
    """DRaFT+'s regulariser: mean squared distance between the adapted and the base model's
    guided predictions, over the differentiated (step, sample) pairs of one training step."""

    total: torch.Tensor | float = 0.0
    count: torch.Tensor | int = 0
    steps: list[int] = field(default_factory=list)

    def add(self, squared: torch.Tensor, in_window: torch.Tensor | None, index: int) -> None:
        if in_window is None:
            self.total = self.total + squared.sum()
            self.count = self.count + squared.numel()
        else:
            self.total = self.total + (squared * in_window).sum()
            self.count = self.count + in_window.sum()
        self.steps.append(index)

    def mean(self) -> torch.Tensor:
        if not self.steps:
            raise RuntimeError("no differentiated step was tracked")
        return self.total / self.count


@contextmanager
def lora_merged(unet: nn.Module) -> Iterator[None]:
    """Fold the active LoRA adapters into their base weights while no gradient is needed,
    then put the exact original weights back.

    Why: an unmerged adapter adds two small matmuls per targeted layer to every UNet call,
    and DRaFT-K's no-grad prefix is most of a training step. The merged weights are fresh
    tensors, so restoring is exact (no W + BA - BA rounding drift over thousands of steps);
    the price is one copy of the targeted weights while merged. Layers whose LoRA dropout
    is active (training mode, dropout > 0) stay unmerged: merging would drop the dropout.
    """
    from peft.tuners.lora import LoraLayer

    originals = []
    try:
        with torch.no_grad():
            for layer in unet.modules():
                if not isinstance(layer, LoraLayer) or layer.merged or layer.disable_adapters:
                    continue
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                if layer.training and any(
                    not isinstance(layer.lora_dropout[a], nn.Identity) for a in active
                ):
                    continue
                base = layer.get_base_layer()
                originals.append((layer, base, base.weight.data))
                base.weight.data = base.weight.data.clone()
                layer.merge(adapter_names=active)
        yield
    finally:
        with torch.no_grad():
            for layer, base, weight in originals:
                if layer.merged:
                    layer.unmerge()  # clears peft's merged state; its arithmetic is discarded
                base.weight.data = weight


class DDIMSampler:
    """DDIM sampling with classifier-free guidance and a gradient window.

    `sample(..., grad_from=g)` runs steps [start, g) without autograd and steps [g, stop) with
    it; `g` may be one index per sample (AlignProp's random truncation), in which case each
    sample's latent is detached where its own window starts.
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler,
        settings: SamplingSettings,
        gradient_checkpointing: bool = True,
        merge_lora: bool = False,
        compile_unet: bool = False,
    ) -> None:
        self.unet = unet
        # UNet calls without gradient go through torch.compile (compiled on first use).
        self.compiled_unet = torch.compile(unet) if compile_unet else None
        self.scheduler = scheduler
        self.settings = settings
        self.gradient_checkpointing = gradient_checkpointing
        self.merge_lora = merge_lora  # steps without gradient run on merged LoRA weights
        scheduler.set_timesteps(settings.num_steps)
        self.timesteps: list[int] = [int(t) for t in scheduler.timesteps]
        self._deviation: BaseDeviation | None = None

    @contextmanager
    def tracking_base_deviation(self) -> Iterator[BaseDeviation]:
        """While active, every differentiated step also runs the base UNet (adapters off, no
        grad) and accumulates ||prediction - base prediction||^2 (the DRaFT+ penalty)."""
        self._deviation = BaseDeviation()
        try:
            yield self._deviation
        finally:
            self._deviation = None

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def predict(self, latents: torch.Tensor, t: int, text: TextConditioning) -> torch.Tensor:
        """The guided model output (epsilon or v) at timestep t: cond and uncond in one batch."""
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return checkpoint(self._guided, latents, t, text, use_reentrant=False)
        return self._guided(latents, t, text)

    def _guided(self, latents: torch.Tensor, t: int, text: TextConditioning) -> torch.Tensor:
        timestep = torch.full((), t, device=latents.device, dtype=torch.long)
        unet = self.unet
        if self.compiled_unet is not None and not torch.is_grad_enabled():
            unet = self.compiled_unet
        if text.uncond is None:
            return unet(
                latents,
                timestep,
                encoder_hidden_states=text.cond,
                added_cond_kwargs=text.cond_added,
            ).sample
        added = None
        if text.cond_added is not None:
            added = {
                key: torch.cat([text.uncond_added[key], value])
                for key, value in text.cond_added.items()
            }
        both = unet(
            torch.cat([latents, latents]),
            timestep,
            encoder_hidden_states=torch.cat([text.uncond, text.cond]),
            added_cond_kwargs=added,
        ).sample
        out_uncond, out_cond = both.chunk(2)
        return out_uncond + self.settings.guidance_scale * (out_cond - out_uncond)

    @torch.no_grad()
    def predict_base(self, latents: torch.Tensor, t: int, text: TextConditioning) -> torch.Tensor:
        """The frozen base model's guided output: the same UNet with its adapters disabled."""
        self.unet.disable_adapters()
        try:
            return self._guided(latents, t, text)
        finally:
            self.unet.enable_adapters()

    def step(
        self,
        latents: torch.Tensor,
        index: int,
        text: TextConditioning,
        rng: StepRandomness | None = None,
        in_window: torch.Tensor | None = None,
    ) -> SampleResult:
        """One DDIM step from self.timesteps[index]; returns x_{t-1} and the x0 prediction.

        `in_window` marks, per sample, whether this step is differentiated for it (None: all).
        """
        t = self.timesteps[index]
        model_output = self.predict(latents, t, text)
        if self._deviation is not None and torch.is_grad_enabled():
            base = self.predict_base(latents, t, text)
            squared = (model_output.float() - base.float()).pow(2).mean(dim=(1, 2, 3))
            self._deviation.add(squared, in_window, index)
        noise = None
        if self.settings.eta > 0:
            if rng is None:
                raise ValueError("eta > 0 needs an rng for the DDIM noise")
            shape = tuple(latents.shape[1:])
            noise = rng.randn(latents.shape[0], shape, latents.dtype, copies=text.copies)
            noise = noise.to(latents.device)
        out = self.scheduler.step(
            model_output, t, latents, eta=self.settings.eta, variance_noise=noise
        )
        return SampleResult(out.prev_sample, out.pred_original_sample)

    def sample(
        self,
        latents: torch.Tensor,
        text: TextConditioning,
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
        merged = lora_merged(self.unet) if self.merge_lora and prefix_end > start else nullcontext()
        with merged:
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
