"""DDPO baseline: the DDIM step's log-probability, the PPO objective's gradient and clipping,
per-prompt advantages, checkpointed state, and a short fit on the tiny model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_module
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_runs import run_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from draft_lightning.baselines.ddpo import DDPOModule
from draft_lightning.baselines.ddpo.advantages import PerPromptStats, batch_normalise
from draft_lightning.baselines.ddpo.ppo import ppo_clipped_loss
from draft_lightning.data import PromptDataModule
from draft_lightning.errors import ConfigError
from draft_lightning.randomness import StepRandomness
from draft_lightning.rewards import Brightness
from draft_lightning.samplers.ddim import ddim_transition
from draft_lightning.samplers.settings import SamplingSettings

PROMPTS = ["a cat", "a dog"]
TINY_SAMPLING = SamplingSettings(num_steps=4, guidance_scale=3.0, eta=1.0, resolution=32)


def make_ddpo(**overrides) -> DDPOModule:
    """A DDPOModule on the tiny model with make_module's sampling settings, eta 1.

    (make_module itself builds a DraftModule; a `module_class` argument there would do.)
    """
    kwargs = dict(reward=Brightness(), pretrained_model="tiny:sd", sampling=TINY_SAMPLING)
    kwargs.update(overrides)
    return DDPOModule(**kwargs)


@pytest.fixture(scope="module")
def ddpo(tiny_sd):
    return make_ddpo()


def reference_log_prob(scheduler, output, t, x, x_next, eta) -> torch.Tensor:
    """log N(x_next; mu, sigma^2) written from the DDIM paper's formulas (float64), as the
    mean over latent dimensions."""
    x, output, x_next = x.double(), output.double(), x_next.double()
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    abar = scheduler.alphas_cumprod.double()
    a_t = abar[t]
    a_prev = abar[t - step] if t - step >= 0 else scheduler.final_alpha_cumprod.double()
    if scheduler.config.prediction_type == "epsilon":
        eps = output
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    else:  # v_prediction: v = sqrt(abar) eps - sqrt(1 - abar) x0
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * output
        eps = a_t.sqrt() * output + (1 - a_t).sqrt() * x
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mu = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
    density = torch.distributions.Normal(mu, sigma).log_prob(x_next)
    return density.flatten(1).mean(1)


@pytest.mark.parametrize("model", ["tiny:sd", "tiny:sd-v"])
def test_transition_is_ddim_step_and_its_log_prob_is_the_gaussian_density(tiny_sd, model):
    module = make_module(pretrained_model=model, sampling=TINY_SAMPLING)
    scheduler = module.sampler.scheduler
    assert scheduler.config.prediction_type == ("epsilon" if model == "tiny:sd" else "v_prediction")
    text = module.pipeline.prompt_encoder.condition(PROMPTS, 3.0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, *module.pipeline.latent_shape), generator=generator)
    with torch.no_grad():
        for index, t in enumerate(module.sampler.timesteps):  # includes the final step
            output = module.sampler.predict(x, index, text)
            for eta in (1.0, 0.4):
                noise = torch.randn(x.shape, generator=generator)
                expected = scheduler.step(output, t, x, eta=eta, variance_noise=noise).prev_sample
                transition = ddim_transition(scheduler, output, t, x, eta)
                assert torch.equal(transition.sample(noise), expected), (index, eta)
                elsewhere = expected + 0.3 * torch.randn(x.shape, generator=generator)
                for x_next in (expected, elsewhere):
                    torch.testing.assert_close(
                        transition.log_prob(x_next).double(),
                        reference_log_prob(scheduler, output, t, x, x_next, eta),
                        rtol=1e-4,  # float32 against float64
                        atol=1e-4,
                    )
            x = expected


def test_at_the_sampling_weights_the_ratio_is_one_and_the_gradient_is_the_policy_gradient(ddpo):
    run = ddpo.sample_trajectories(PROMPTS, StepRandomness(0, 0, 0))
    assert run.latents.shape == (2, 5, *ddpo.pipeline.latent_shape) and run.log_probs.shape == (
        2,
        4,
    )
    text = ddpo.pipeline.condition(PROMPTS)
    advantages = torch.tensor([1.3, -0.7])
    params = ddpo.trainable_parameters()
    scheduler = ddpo.sampler.scheduler
    for index in (0, 3):
        t, x = ddpo.sampler.timesteps[index], run.latents[:, index]
        output = ddpo.sampler.predict(x, index, text)
        log_prob = ddim_transition(scheduler, output, t, x, 1.0).log_prob(run.latents[:, index + 1])
        old = run.log_probs[:, index]
        assert torch.equal(torch.exp(log_prob - old), torch.ones(2))
        objective, diagnostics = ppo_clipped_loss(log_prob, old, advantages, clip_range=1e-4)
        ppo_grads = torch.autograd.grad(objective.mean(), params, retain_graph=True)
        pg_grads = torch.autograd.grad((-advantages * log_prob).mean(), params)
        assert any(g.abs().sum() > 0 for g in pg_grads)
        for ppo_grad, pg_grad in zip(ppo_grads, pg_grads, strict=True):
            torch.testing.assert_close(ppo_grad, pg_grad, rtol=1e-5, atol=1e-10)
        assert diagnostics["clipfrac"].sum() == 0 and diagnostics["approx_kl"].sum() == 0


def test_a_ratio_clipped_in_the_advantages_direction_has_zero_gradient():
    eps = 1e-3
    # ratio above 1 + eps, below 1 - eps, the same two against the advantage, then inside.
    log_prob = torch.tensor([0.01, -0.01, 0.01, -0.01, 1e-4], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0, 2.0])
    objective, diagnostics = ppo_clipped_loss(log_prob, torch.zeros(5), advantages, eps)
    (grad,) = torch.autograd.grad(objective.sum(), log_prob)
    ratio = log_prob.detach().exp()
    assert grad[0] == 0 and grad[1] == 0  # clipped: moving further gains nothing
    torch.testing.assert_close(grad[2:], -advantages[2:] * ratio[2:])  # d(-A r)/d log p
    assert diagnostics["clipfrac"].tolist() == [1, 1, 1, 1, 0]


def test_per_prompt_advantages_are_standardised_once_a_prompt_has_enough_samples():
    stats = PerPromptStats(buffer_size=4, min_count=4)
    prompts = ["a", "a", "b", "b"]
    first = torch.tensor([1.0, 2.0, 10.0, 20.0])
    # Too few samples per prompt yet: the batch's statistics stand in.
    torch.testing.assert_close(stats.advantages(prompts, first), batch_normalise(first))
    second = torch.tensor([3.0, 5.0, 4.0, 9.0, 30.0, 10.0, 50.0, 20.0])
    advantages = stats.advantages(prompts * 2, second)
    for name in ("a", "b"):
        rows = [i for i, p in enumerate(prompts * 2) if p == name]
        assert len(stats.buffers[name]) == 4  # the buffer now holds exactly this batch's four
        torch.testing.assert_close(advantages[rows].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
        std = advantages[rows].std(unbiased=False)
        torch.testing.assert_close(std, torch.tensor(1.0), atol=1e-5, rtol=0)
    # A non-finite reward is not remembered (NonFiniteGuard skips the step it spoils).
    assert stats.advantages(["a"], torch.tensor([float("nan")])).isnan().all()
    assert len(stats.buffers["a"]) == 4 and all(v == v for v in stats.buffers["a"])


def test_statistics_and_reward_queries_round_trip_through_a_checkpoint(ddpo, tmp_path):
    ddpo.stats = PerPromptStats(buffer_size=6, min_count=2)
    ddpo.stats.advantages(["a", "b", "a"], torch.tensor([0.1, 0.5, 0.3]))
    ddpo.reward_queries = 12
    checkpoint = {"state_dict": ddpo.state_dict()}
    ddpo.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)
    expected = ddpo.stats.advantages(["a", "b"], torch.tensor([0.7, 0.2]))
    ddpo.stats = PerPromptStats(buffer_size=6, min_count=2)
    ddpo.reward_queries = 0
    ddpo.on_load_checkpoint(loaded)
    assert ddpo.reward_queries == 12
    assert ddpo.stats.advantages(["a", "b"], torch.tensor([0.7, 0.2])).tolist() == (
        expected.tolist()
    )


class CountUnetCalls(Callback):
    """UNet forwards with and without autograd during training batches."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.handle = None

    def on_train_start(self, trainer, pl_module) -> None:
        hook = lambda *_: self.calls.append(torch.is_grad_enabled())  # noqa: E731
        self.handle = pl_module.pipeline.denoiser.register_forward_pre_hook(hook)

    def on_train_end(self, trainer, pl_module) -> None:
        self.handle.remove()


def fit(module, max_steps, tmp_path, callbacks=(), ckpt_path=None):
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, PromptDataModule(train_prompts=PROMPTS, batch_size=2), ckpt_path=ckpt_path)
    return trainer


def lora_vector(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.trainable_parameters()]).clone()


def test_a_short_fit_takes_several_ppo_steps_per_batch_and_logs_its_metrics(tiny_sd, tmp_path):
    module = make_ddpo(
        updates_per_batch=2, timestep_fraction=0.5, micro_batch_size=1, max_grad_norm=0.5
    )
    before = lora_vector(module)
    counter = CountUnetCalls()
    trainer = fit(module, max_steps=4, tmp_path=tmp_path, callbacks=[counter])
    assert trainer.global_step == 4  # optimiser steps: 2 batches x 2 updates
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2
    assert not torch.equal(before, lora_vector(module))
    # Per batch: 4 steps x 2 micro-batches without grad; 2 updates x 2 steps x 1 with grad.
    assert counter.calls.count(False) == 2 * 8 and counter.calls.count(True) == 2 * 4
    metrics = trainer.callback_metrics
    for name in ("reward", "loss", "approx_kl", "clipfrac", "grad_norm", "reward_queries"):
        assert torch.isfinite(metrics[f"train/{name}"]), name
    assert metrics["train/reward_queries"] == 4 and module.reward_queries == 4
    assert metrics["step"] == 4


def test_a_resumed_run_continues_exactly(tiny_sd, tmp_path):
    def module():
        torch.manual_seed(0)  # the same LoRA initialisation
        return make_ddpo(stat_buffer_size=4, stat_min_count=2)

    straight = module()
    fit(straight, max_steps=3, tmp_path=tmp_path / "straight")
    first = module()
    checkpoints = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    fit(first, max_steps=2, tmp_path=tmp_path / "first", callbacks=[checkpoints])
    resumed = module()
    fit(resumed, 3, tmp_path / "resumed", ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert torch.equal(lora_vector(straight), lora_vector(resumed))
    assert straight.stats.state_dict() == resumed.stats.state_dict()
    assert resumed.reward_queries == straight.reward_queries == 6


def test_eta_zero_is_refused_in_one_line_before_weights_load():
    sampling = SamplingSettings(num_steps=4, guidance_scale=3.0, eta=0.0, resolution=32)
    with pytest.raises(ConfigError, match=r"sampling\.eta=0\.0") as error:
        DDPOModule(reward=Brightness(), pretrained_model="no/such-model", sampling=sampling)
    assert "\n" not in str(error.value)


def test_a_flow_matching_model_is_refused_in_one_line_before_weights_load(tmp_path):
    from flow_reference import weightless_copy

    from draft_lightning.testing.tiny_flux import tiny_flux_path

    folder = weightless_copy(tiny_flux_path(), tmp_path / "flux")
    sampling = SamplingSettings(num_steps=4, guidance_scale=3.5, eta=1.0, resolution=32)
    with pytest.raises(ConfigError, match=r"sampling\.eta=1\.0: FLUX\.1 .* DDPO") as error:
        DDPOModule(reward=Brightness(), pretrained_model=str(folder), sampling=sampling)
    assert "\n" not in str(error.value)


def cli_accepts_model_subclasses() -> bool:
    """Whether `lightning fit` takes `model.class_path` (LightningCLI's subclass_mode_model)."""
    return "subclass_mode_model=True" in (ROOT / "src/draft_lightning/cli.py").read_text()


@pytest.mark.slow
@pytest.mark.skipif(
    not cli_accepts_model_subclasses(),
    reason="cli.main needs LightningCLI(..., subclass_mode_model=True) for configs/ddpo.yaml",
)
def test_the_ddpo_config_fits_through_the_cli_on_the_tiny_model(tiny_sd, tmp_path):
    args = [
        *("fit", "--config", str(ROOT / "configs/ddpo.yaml")),
        *("--config", str(ROOT / "configs/cpu_tiny.yaml")),
        *("--trainer.max_steps", "4", "--trainer.num_sanity_val_steps", "0"),
        *("--trainer.limit_val_batches", "0", "--model.sampling.num_steps", "4"),
        *("--checkpoint.every_n_train_steps", "2"),
    ]
    lightning = Path(sys.executable).with_name("lightning")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # In its own process, forked after the imports (lightning_runs.run_command).
    result = run_command([str(lightning), *args], cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddpo" / "version_0"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    queries = [(e.step, e.value) for e in events.Scalars("train/reward_queries")]
    assert queries == [(2, 2.0), (4, 4.0)]  # x-axis: optimiser steps, 2 per batch of 2
    for tag in ("train/reward", "train/loss", "train/approx_kl", "train/clipfrac"):
        assert len(events.Scalars(tag)) == 2, tag
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4 and state["reward_queries"] == 4
    assert (run_dir / "lora" / "last" / "pytorch_lora_weights.safetensors").is_file()
