"""DraftModule: reward fine-tuning by backpropagating through the sampling chain.

training_step follows the paper's Algorithm 1: draw prompts and x_T, sample with the
estimator's gradient window, decode, score with the (frozen, differentiable) reward, and
ascend the reward by descending loss = -mean reward (+ DRaFT+'s penalty).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from draft_lightning.base_module import RewardFineTuningModule
from draft_lightning.errors import ConfigError
from draft_lightning.estimators import DraftLV, Estimator
from draft_lightning.randomness import StepRandomness
from draft_lightning.regularizers.draft_plus import tracking_base_deviation
from draft_lightning.rewards import Reward
from draft_lightning.samplers.settings import SamplingSettings


@dataclass
class RewardLoss:
    """One step's objective and what it is made of."""

    loss: torch.Tensor
    reward: torch.Tensor  # per scored image (copies included)
    parts: dict[str, torch.Tensor]
    penalty: torch.Tensor | None  # DRaFT+'s base deviation, when kl_coeff > 0
    images: int  # images scored (reward queries)


class DraftModule(RewardFineTuningModule):
    """Fine-tune a LoRA adapter by backpropagating a reward through the sampling chain
    (DRaFT, DRaFT-K, DRaFT-LV, AlignProp, ReFL, Direct-Align: see `estimator`); every other
    argument is RewardFineTuningModule's (pretrained_model, sampling, lora, optimizer,
    frozen_dtype, ...).

    Args:
        reward: the frozen differentiable reward to maximise (a `Reward`; `WeightedSum` mixes
            several).
        estimator: where the gradient flows: Draft, DraftK, DraftLV, RandomTruncation, ReFL,
            DirectAlign.
        kl_coeff: DRaFT+ regulariser weight: adds kl_coeff * mean ||eps_lora - eps_base||^2
            over the differentiated steps (base = the same denoiser with adapters disabled),
            against reward hacking and loss of diversity. 0 turns it off.
    """

    def __init__(
        self,
        reward: Reward,
        estimator: Estimator | None = None,
        kl_coeff: float = 0.0,
        **kwargs,
    ) -> None:
        self.estimator = estimator if estimator is not None else DraftLV()
        self.kl_coeff = kl_coeff
        super().__init__(reward=reward, **kwargs)

    def check_arguments(self, sampling: SamplingSettings) -> None:
        self.estimator.check(sampling.num_steps)
        if self.kl_coeff < 0:
            raise ConfigError(f"kl_coeff={self.kl_coeff} must be >= 0")
        if self.kl_coeff and not self.estimator.steps_through_chain:
            raise ConfigError(
                f"kl_coeff={self.kl_coeff}: DRaFT+'s penalty is taken over differentiated "
                f"sampling steps, and {type(self.estimator).__name__} takes none; set kl_coeff 0"
            )

    # --- the algorithm -------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        prompts = list(batch["prompts"])
        step = self.reward_loss(prompts, self.step_randomness(batch_idx))
        self.count_reward_queries(step.images)  # DRaFT-LV: every re-noised copy counts
        if step.penalty is not None:  # DRaFT+
            self.log("train/kl", step.penalty, sync_dist=True, batch_size=len(prompts))
        self.log_rewards(step.reward, step.parts, batch_size=len(prompts))
        self.log("train/loss", step.loss, prog_bar=True, batch_size=len(prompts))
        self.last_loss = step.loss.detach()  # for NonFiniteGuard, which runs after backward
        self.last_train_scores = {"reward": step.reward.detach()} | {
            name: scores.detach() for name, scores in step.parts.items()
        }
        return step.loss

    def reward_loss(self, prompts: list[str], rng: StepRandomness) -> RewardLoss:
        """Algorithm 1 for one batch: sample with the estimator's gradient window, decode,
        score, and return loss = -mean reward (+ kl_coeff * the base deviation)."""
        text = self.pipeline.condition(prompts)
        noise = self.pipeline.initial_noise(rng.randn(len(prompts), self.pipeline.latent_shape))
        tracking = tracking_base_deviation(self.sampler) if self.kl_coeff else nullcontext()
        with tracking as deviation:
            latents = self.estimator.sample(self.sampler, noise, text, rng)  # x_T ~ N(0, I)
        images = self.pipeline.decode(latents)
        copies = latents.shape[0] // len(prompts)
        reward, parts = self.reward.score(images, prompts * copies)
        loss = -reward.mean()
        penalty = None
        if deviation is not None:
            penalty = deviation.mean()
            loss = loss + self.kl_coeff * penalty
        return RewardLoss(loss, reward, parts, penalty, latents.shape[0])
