"""DDPOModule: the RL baseline that DRaFT is compared with (Black et al. 2023, "Training
Diffusion Models with Reinforcement Learning"), built from the same parts as DraftModule
(the pipeline, the reward, evaluation, logging, checkpoints and CLI of base_module.py).

DDPO never differentiates the reward. It treats each stochastic DDIM step (eta > 0) as a
Gaussian policy and ascends E[reward] by PPO on the steps' likelihood ratios:

1. sample trajectories without gradient, recording x_t, x_{t-1} and log p(x_{t-1} | x_t);
2. decode and score them (no gradient: the reward may be a black box);
3. advantages: rewards normalised per prompt by running statistics, clipped;
4. for each (sub-sampled) step, recompute log p of the recorded x_{t-1} under the current
   LoRA weights and descend mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))).

One backward pass per (micro-batch, step) keeps memory at one UNet call; several optimiser
steps per sampled batch (`updates_per_batch`, `inner_epochs`) need Lightning's manual
optimisation, in which `global_step` counts optimiser steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from lightning.pytorch.cli import OptimizerCallable

from draft_lightning.base_module import RewardFineTuningModule
from draft_lightning.baselines.ddpo.advantages import PerPromptStats, batch_normalise
from draft_lightning.baselines.ddpo.ppo import Trajectories, ppo_clipped_loss
from draft_lightning.errors import ConfigError
from draft_lightning.randomness import StepRandomness
from draft_lightning.rewards import Reward
from draft_lightning.samplers.base import Sampler
from draft_lightning.samplers.ddim import DDIMSampler
from draft_lightning.samplers.settings import SamplingSettings

# Lightning warns that under manual optimisation a checkpoint holds the weights after the
# batch's optimiser steps: exactly the state a resumed run continues from.
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")

# DDPO's sampler: 50 DDIM steps, eta 1 (DDPM-like noise, so every step has a likelihood),
# guidance 5 (ddpo-pytorch, config/base.py).
DDPO_SAMPLING = SamplingSettings(num_steps=50, guidance_scale=5.0, eta=1.0, resolution=512)


def ddpo_adamw(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """AdamW as ddpo-pytorch trains LoRA (config/base.py)."""
    return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)


@contextmanager
def without_call_checkpointing(sampler: Sampler) -> Iterator[None]:
    """Run differentiated UNet calls without torch.utils.checkpoint. DDPO backpropagates each
    call at once, so its activations are freed right away either way; checkpointing would
    only add a second forward pass."""
    saved = sampler.gradient_checkpointing
    sampler.gradient_checkpointing = False
    try:
        yield
    finally:
        sampler.gradient_checkpointing = saved


class DDPOModule(RewardFineTuningModule):
    """DDPO: train a LoRA adapter with PPO on the DDIM sampling chain (the RL baseline).

    Every other argument is RewardFineTuningModule's (pretrained_model, lora, frozen_dtype,
    seed, ...).
    `gradient_checkpointing` has no use here (no gradient flows through the chain, and each
    UNet call is backpropagated at once).

    Args:
        reward: the frozen reward to maximise; only its values are used, never its gradient.
        sampling: must have eta > 0; default DDPO's 50 steps, eta 1, guidance 5.
        optimizer: default AdamW(lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4) as in
            ddpo-pytorch's LoRA runs.
        clip_range: PPO's epsilon: likelihood ratios are clipped to [1 - eps, 1 + eps]. Small
            because the log-probabilities are per latent dimension (see ddim_logprob.py).
        adv_clip_max: advantages are clipped to [-adv_clip_max, adv_clip_max].
        timestep_fraction: the fraction of the sampling steps trained on per update, drawn at
            random (the same steps for the whole update); 1 trains on every step.
        per_prompt_stat_tracking: normalise rewards per prompt by running statistics (else by
            the statistics of the global batch).
        stat_buffer_size: rewards kept per prompt for those statistics.
        stat_min_count: rewards a prompt needs before its own statistics replace the batch's.
        inner_epochs: passes of PPO updates over each sampled batch.
        updates_per_batch: optimiser steps per pass: the batch is shuffled and split into this
            many minibatches (DDPO's aesthetic runs: 256 samples, 2 updates).
        micro_batch_size: most samples per UNet, VAE and reward call when sampling, scoring
            and training (gradients of a minibatch accumulate over its micro-batches); None:
            the whole batch at once. Memory only: the noise is drawn for the whole batch.
        max_grad_norm: clip the LoRA gradient's norm to this before each optimiser step (None:
            no clipping). Replaces `trainer.gradient_clip_val`, which Lightning refuses
            under manual optimisation.
    """

    def __init__(
        self,
        reward: Reward,
        sampling: SamplingSettings = DDPO_SAMPLING,
        optimizer: OptimizerCallable | None = None,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        timestep_fraction: float = 1.0,
        per_prompt_stat_tracking: bool = True,
        stat_buffer_size: int = 32,
        stat_min_count: int = 16,
        inner_epochs: int = 1,
        updates_per_batch: int = 1,
        micro_batch_size: int | None = None,
        max_grad_norm: float | None = 1.0,
        **kwargs,
    ) -> None:
        # Checked before any weights load (check_arguments checks the sampler).
        for name, value, low in [
            ("clip_range", clip_range, 0.0),
            ("adv_clip_max", adv_clip_max, 0.0),
        ]:
            if not value > low:
                raise ConfigError(f"{name}={value} must be > {low}")
        if not 0 < timestep_fraction <= 1:
            raise ConfigError(f"timestep_fraction={timestep_fraction} must be in (0, 1]")
        for name, value in [
            ("stat_buffer_size", stat_buffer_size),
            ("stat_min_count", stat_min_count),
            ("inner_epochs", inner_epochs),
            ("updates_per_batch", updates_per_batch),
            ("micro_batch_size", micro_batch_size or 1),
        ]:
            if value < 1:
                raise ConfigError(f"{name}={value} must be >= 1")
        if stat_min_count > stat_buffer_size:
            raise ConfigError(
                f"stat_min_count={stat_min_count} exceeds stat_buffer_size={stat_buffer_size}: "
                "per-prompt statistics would never be used"
            )
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm={max_grad_norm} must be > 0 (or null)")

        super().__init__(reward=reward, sampling=sampling, optimizer=optimizer, **kwargs)
        if not isinstance(self.sampler, DDIMSampler):
            raise ConfigError(
                f"DDPOModule needs a DDIM sampler (SD 1.x/2.x, SDXL); "
                f"{self.pipeline.family.display_name} samples with {type(self.sampler).__name__}"
            )
        self.automatic_optimization = False
        self.clip_range = clip_range
        self.adv_clip_max = adv_clip_max
        self.inner_epochs = inner_epochs
        self.updates_per_batch = updates_per_batch
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = max_grad_norm
        self.stats = (
            PerPromptStats(stat_buffer_size, stat_min_count) if per_prompt_stat_tracking else None
        )

        # Steps whose transition has a variance (with SD's final_alpha_cumprod < 1, all).
        self.trainable_steps = [
            i for i in range(self.sampler.num_steps) if self.sampler.step_std(i)
        ]
        self.steps_per_update = int(len(self.trainable_steps) * timestep_fraction)
        if self.steps_per_update < 1:
            raise ConfigError(
                f"timestep_fraction={timestep_fraction} of {len(self.trainable_steps)} steps "
                "trains on no step"
            )

    default_optimizer = staticmethod(ddpo_adamw)

    def check_arguments(self, sampling: SamplingSettings) -> None:
        if sampling.eta <= 0:
            raise ConfigError(
                f"sampling.eta={sampling.eta}: DDPO needs eta > 0 (a stochastic sampler whose "
                "steps have a likelihood); the DDPO paper uses 1.0"
            )

    # --- the algorithm -------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> None:
        prompts = list(batch["prompts"])
        if len(prompts) < self.updates_per_batch:
            raise ConfigError(
                f"updates_per_batch={self.updates_per_batch} exceeds the batch's "
                f"{len(prompts)} samples"
            )
        rng = self.step_randomness(batch_idx)
        run = self.sample_trajectories(prompts, rng)
        advantages = self.advantages(prompts, run.rewards)
        advantages = advantages.clamp(-self.adv_clip_max, self.adv_clip_max)
        metrics = self.ppo_updates(prompts, run, advantages, rng)

        self.log_rewards(run.rewards, run.parts, batch_size=len(prompts))
        for name, value in metrics.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", sync_dist=True)
        # x-axis of the training curves: optimiser steps, as for validation (DraftModule).
        self.log("step", float(self.global_step))
        self.count_reward_queries(len(prompts))  # after the updates: logged at their step
        self.last_train_scores = {"reward": run.rewards} | run.parts

    @torch.no_grad()
    def sample_trajectories(self, prompts: list[str], rng: StepRandomness) -> Trajectories:
        """Sample with the current weights and no graph, recording each step's log-prob; then
        decode and score. Noise is drawn step by step for the whole batch, so micro-batching
        changes nothing but memory."""
        chunks = self.chunks(len(prompts))
        chunk_prompts = [[prompts[i] for i in rows] for rows in chunks]
        texts = [self.pipeline.condition(names) for names in chunk_prompts]
        shape = self.pipeline.latent_shape
        x = rng.randn(len(prompts), shape).to(self.device)  # x_T ~ N(0, I)
        latents, log_probs = [x], []
        for index in range(self.sampler.num_steps):
            noise = rng.randn(len(prompts), shape, x.dtype).to(self.device)
            steps = []
            for rows, text in zip(chunks, texts, strict=True):
                output = self.sampler.predict(x[rows], index, text)
                transition = self.sampler.transition(output, index, x[rows])
                x_prev = transition.sample(noise[rows])
                steps.append((x_prev, transition.log_prob(x_prev)))
            x = torch.cat([s[0] for s in steps])
            latents.append(x)
            log_probs.append(torch.cat([s[1] for s in steps]))
        scored = [
            self.reward.score(self.pipeline.decode(x[rows]), names)
            for rows, names in zip(chunks, chunk_prompts, strict=True)
        ]
        rewards = torch.cat([s[0] for s in scored]).detach()
        parts = {name: torch.cat([s[1][name] for s in scored]).detach() for name in scored[0][1]}
        return Trajectories(torch.stack(latents, 1), torch.stack(log_probs, 1), rewards, parts)

    def advantages(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        """This rank's advantages, from the rewards and prompts of every rank, so all ranks
        keep identical statistics (and any rank's checkpoint holds them)."""
        all_prompts, all_rewards = prompts, rewards.float()
        world_size, rank = self.world_size, self.global_rank
        if world_size > 1:
            all_rewards = self.all_gather(rewards.float()).reshape(-1)
            gathered: list[list[str] | None] = [None] * world_size
            torch.distributed.all_gather_object(gathered, prompts)
            all_prompts = [p for block in gathered for p in block]
        if self.stats is not None:
            normalised = self.stats.advantages(all_prompts, all_rewards)
        else:
            normalised = batch_normalise(all_rewards)
        mine = slice(rank * len(prompts), (rank + 1) * len(prompts))
        return normalised[mine].to(rewards.device)

    def ppo_updates(
        self,
        prompts: list[str],
        run: Trajectories,
        advantages: torch.Tensor,
        rng: StepRandomness,
    ) -> dict[str, float]:
        """`inner_epochs` x `updates_per_batch` optimiser steps on the sampled batch; returns
        the mean loss, approx_kl and clipfrac over them."""
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        totals = {"loss": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
        updates = 0
        with without_call_checkpointing(self.sampler):
            for _ in range(self.inner_epochs):
                order = torch.randperm(len(prompts), generator=rng.generator)
                for rows in torch.tensor_split(order, self.updates_per_batch):
                    choice = torch.randperm(len(self.trainable_steps), generator=rng.generator)
                    steps = sorted(self.trainable_steps[i] for i in choice[: self.steps_per_update])
                    optimizer.zero_grad(set_to_none=True)
                    result = self.accumulate_update(prompts, run, advantages, rows, steps)
                    self.last_loss = result["loss"]  # for NonFiniteGuard, before the step
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    for name in totals:
                        totals[name] += float(result[name])
                    updates += 1
        return {name: value / updates for name, value in totals.items()}

    def accumulate_update(
        self,
        prompts: list[str],
        run: Trajectories,
        advantages: torch.Tensor,
        rows: torch.Tensor,
        steps: list[int],
    ) -> dict[str, torch.Tensor]:
        """Accumulate the gradient of the minibatch `rows` over `steps`: one backward per
        (micro-batch, step), each scaled so the total is the mean over samples and steps."""
        weight = 1.0 / (len(rows) * len(steps))
        result = {
            name: torch.zeros((), device=self.device) for name in ("loss", "approx_kl", "clipfrac")
        }
        for micro in rows.split(self.micro_batch_size or len(rows)):
            text = self.pipeline.condition([prompts[i] for i in micro])
            for index in steps:
                x = run.latents[micro, index]
                output = self.sampler.predict(x, index, text)
                log_prob = self.sampler.transition(output, index, x).log_prob(
                    run.latents[micro, index + 1]
                )
                objective, diagnostics = ppo_clipped_loss(
                    log_prob, run.log_probs[micro, index], advantages[micro], self.clip_range
                )
                loss = objective.sum() * weight
                self.manual_backward(loss)
                result["loss"] += loss.detach()
                for name, values in diagnostics.items():
                    result[name] += values.sum() * weight
        return result

    # --- pieces ----------------------------------------------------------------------------

    def chunks(self, n: int) -> list[torch.Tensor]:
        return list(torch.arange(n).split(self.micro_batch_size or n))

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer else 1

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the gradient norm (the base module), then clip: the place where Lightning clips under
        automatic optimisation (after mixed-precision unscaling and NonFiniteGuard)."""
        super().on_before_optimizer_step(optimizer)
        if self.max_grad_norm is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The base module's filtering plus the per-prompt statistics, so a resumed run
        normalises advantages exactly as the uninterrupted one would."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["ddpo"] = {"stats": None if self.stats is None else self.stats.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ddpo")
        if state is None:
            return
        if self.stats is not None and state["stats"] is not None:
            self.stats.load_state_dict(state["stats"])
