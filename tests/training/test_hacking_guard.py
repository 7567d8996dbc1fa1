"""The hacking guard, held-out rewards and the best checkpoint, on a reward that is
gameable by construction: brightness (trained) rises without bound, while a held-out
"exposure" judge (plugins/heldout.py) prefers a mean luma just above the base tiny model's,
so it rises with brightness at first and falls once training overshoots it."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import ROOT, make_module
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_runs import CONFIGS, lightning_fit
from plugins.heldout import Exposure
from safetensors.torch import load_file

from draft_lightning.data import PromptDataModule
from draft_lightning.rewards import Brightness
from draft_lightning.training.best_checkpoint import BestCheckpoint
from draft_lightning.training.hacking_guard import GUARDED_TAG, HackingGuard
from draft_lightning.training.lora_export import LoraExport

EVERY = 2  # optimiser steps between validations


class LearnedExposure(Exposure):
    """Exposure with a weight, to show held-out weights never get a gradient."""

    def __init__(self) -> None:
        super().__init__(name="learned_exposure")
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, prompts):
        return self.weight * super().forward(images, prompts)


def hacking_module(**overrides):
    kwargs = dict(
        reward=Brightness(),
        heldout_rewards=[Exposure()],
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
    )
    return make_module(**(kwargs | overrides))


def fit(module, tmp_path, max_steps, callbacks, ckpt_path=None):
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=EVERY,
        num_sanity_val_steps=-1,  # step 0: the base model's evaluation
        logger=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = PromptDataModule(batch_size=2, num_val_prompts=4, num_val_seeds=2)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


# --- the verdict on given evaluations -------------------------------------------------------


def observe(guard, step, reward, heldout, error=0.01):
    values = {"val/reward": reward, "val/heldout/judge": heldout}
    return guard.observe(step, values, {"val/heldout/judge": error})


def test_a_fall_within_noise_is_not_flagged_and_one_beyond_it_is_after_patience():
    guard = HackingGuard(patience=2, noise=2.0)
    observe(guard, 0, 0.1, 0.50)
    # 2 standard errors of the difference: 2 * hypot(0.01, 0.01) = 0.028
    assert not observe(guard, 1, 0.2, 0.48)["diverging"]  # fell 0.02: noise
    first = observe(guard, 2, 0.3, 0.46)  # fell 0.04 from the peak: beyond noise
    assert first["diverging"] == {"val/heldout/judge": (0, 0.50)} and not first["hacking"]
    assert math.isnan(first["guarded"])  # not selectable, though not yet flagged
    second = observe(guard, 3, 0.4, 0.45)
    assert second["hacking"] and second["new"]
    third = observe(guard, 4, 0.5, 0.44)
    assert third["hacking"] and not third["new"]  # the line is printed once per episode
    assert guard.flagged_steps == [3, 4]


def test_a_fall_below_min_fall_is_not_counted_however_small_its_noise():
    # A near-certain judge: standard errors near 0 make a fall in the fourth decimal
    # "beyond noise"; min_fall sets the smallest fall that counts.
    strict, tolerant = HackingGuard(patience=1), HackingGuard(patience=1, min_fall=0.02)
    for guard in (strict, tolerant):
        observe(guard, 0, 0.2, 0.9999, error=1e-5)
    assert observe(strict, 1, 0.6, 0.9995, error=1e-5)["hacking"]
    assert not observe(tolerant, 1, 0.6, 0.9995, error=1e-5)["diverging"]
    assert observe(tolerant, 2, 0.7, 0.97, error=1e-5)["hacking"]  # a fall of 0.03 counts


def test_a_held_out_fall_without_a_reward_gain_is_not_hacking():
    guard = HackingGuard(patience=1)
    observe(guard, 0, 0.5, 0.50)
    verdict = observe(guard, 1, 0.4, 0.30)  # everything got worse: not the reward's doing
    assert not verdict["diverging"] and verdict["guarded"] == pytest.approx(0.4)


def test_recovery_resets_the_streak_and_off_never_flags():
    guard = HackingGuard(patience=2)
    observe(guard, 0, 0.1, 0.5)
    observe(guard, 1, 0.2, 0.4)
    observe(guard, 2, 0.3, 0.5)  # back at the peak
    assert guard.streak == 0 and not observe(guard, 3, 0.4, 0.4)["hacking"]
    off = HackingGuard(action="off", patience=1)
    observe(off, 0, 0.1, 0.5)
    assert observe(off, 1, 0.9, 0.0)["guarded"] == pytest.approx(0.9) and not off.flagged_steps


def test_the_selection_criterion_can_weight_held_out_rewards():
    guard = HackingGuard(selection={"val/reward": 1.0, "val/heldout/judge": 2.0})
    assert observe(guard, 0, 0.1, 0.5)["guarded"] == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"action": "explode"}, "action='explode' must be warn, stop, record or off"),
        ({"patience": 0}, "patience=0 must be >= 1"),
        ({"noise": -1.0}, "noise=-1.0"),
        ({"min_fall": math.nan}, "min_fall=nan must be a finite number >= 0"),
        ({"selection": {"train/reward": 1.0}}, "must weight validation scalars"),
    ],
)
def test_bad_settings_are_refused_in_one_line(args, message):
    from draft_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        HackingGuard(**args)


# --- on the tiny model ------------------------------------------------------------------------


def test_guard_fires_within_patience_after_the_divergence_and_best_is_not_flagged(
    tiny_sd, tmp_path
):
    module = hacking_module()
    guard = HackingGuard(patience=2, watch_diversity=False)
    best = BestCheckpoint(dirpath=tmp_path / "best", monitor=GUARDED_TAG, mode="max")
    plain = ModelCheckpoint(dirpath=tmp_path / "plain", monitor="val/reward", mode="max")
    fit(module, tmp_path, 12, [guard, best, plain, LoraExport()])
    steps = [step for step, _ in module.eval_history]
    heldout = [v["val/heldout/exposure"] for _, v in module.eval_history]
    reward = [v["val/reward"] for _, v in module.eval_history]
    peak = heldout.index(max(heldout))
    # The construction holds: brightness rises all along, the judge peaks inside the run
    # and falls at every validation after its peak.
    assert all(b > a for a, b in zip(reward, reward[1:], strict=False))
    assert 0 < peak < len(steps) - 3
    assert all(b < a for a, b in zip(heldout[peak:], heldout[peak + 1 :], strict=False))
    # Nothing flagged up to the judge's peak; flagged at the `patience`-th fall after it.
    assert guard.flagged_steps[0] == steps[peak + guard.patience]
    assert guard.flagged_steps == steps[peak + guard.patience :]
    assert [v["val/hacking"] for _, v in module.eval_history] == [
        float(step in guard.flagged_steps) for step in steps
    ]
    # The best checkpoint is the judge's peak (the highest reward not diverging); the plain
    # rule keeps the last, hacked one. lora/best/ is the selected adapter.
    assert best.best_model_path.endswith(f"step={steps[peak]}.ckpt")
    assert plain.best_model_path.endswith(f"step={steps[-1]}.ckpt")

    def exported(folder):
        return load_file(tmp_path / "lora" / folder / "pytorch_lora_weights.safetensors")

    best_lora, peak_lora, last_lora = (exported(f) for f in ("best", f"step={steps[peak]}", "last"))
    assert all(torch.equal(best_lora[k], peak_lora[k]) for k in peak_lora)
    assert not all(torch.equal(best_lora[k], last_lora[k]) for k in last_lora)


def test_stop_writes_a_checkpoint_that_resumes_with_the_guards_history(tiny_sd, tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    guard = HackingGuard(action="stop", patience=1, watch_diversity=False)
    trainer = fit(hacking_module(), tmp_path, 16, [guard, checkpoints])
    stopped_at = guard.flagged_steps[0]
    assert trainer.global_step == stopped_at < 16  # stopped at the flag, not at max_steps
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == stopped_at
    resumed_guard = HackingGuard(action="stop", patience=1, watch_diversity=False)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = fit(
        hacking_module(), tmp_path, stopped_at + 2 * EVERY, [resumed_guard, checkpoints],
        ckpt_path=tmp_path / "ckpt" / "last.ckpt",
    )  # fmt: skip
    assert trainer.global_step == stopped_at + 2 * EVERY  # resumed, then ran to max_steps
    assert [r["step"] for r in resumed_guard.records] == list(
        range(0, stopped_at + 2 * EVERY + 1, EVERY)
    )
    # Still flagged after the resume, but the episode was already announced: no second stop.
    assert resumed_guard.flagged_steps[-1] == stopped_at + 2 * EVERY


def test_stop_from_the_command_line_ends_the_run_at_the_flag_with_last_ckpt(tiny_sd, tmp_path):
    """`action: stop` as a user meets it: `lightning fit` with the guard set in the CLI."""
    result = lightning_fit(
        [CONFIGS / "draft_lv.yaml", CONFIGS / "cpu_tiny.yaml"],
        [
            "--trainer.max_steps", "16",
            "--trainer.val_check_interval", str(EVERY),
            "--trainer.limit_val_batches", "1.0",
            "--trainer.num_sanity_val_steps", "-1",
            "--checkpoint.every_n_train_steps", "100",
            "--model.estimator", "draft_lightning.estimators.DraftK",
            "--model.heldout_rewards", '[{"class_path": "plugins.heldout.Exposure"}]',
            "--hacking_guard.action", "stop",
            "--hacking_guard.patience", "1",
            "--hacking_guard.watch_diversity", "false",
        ],
        tmp_path,
        pythonpath=ROOT / "tests",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    flagged = re.findall(
        r"hacking_guard: reward hacking suspected at step (\d+): .*stopping; last\.ckpt resumes",
        result.stdout + result.stderr,
    )
    assert len(flagged) == 1, (result.stdout + result.stderr)[-3000:]
    stopped_at = int(flagged[0])
    assert 0 < stopped_at < 16
    (last,) = tmp_path.glob("logs/**/last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == stopped_at  # the run ended at the flag, not at max_steps


def test_held_out_rewards_never_receive_gradient(tiny_sd, tmp_path):
    judged = hacking_module(heldout_rewards=[LearnedExposure()])
    plain = hacking_module(heldout_rewards=[])
    plain.load_state_dict(judged.state_dict(), strict=False)  # the same adapter to start
    judge = judged.heldout_rewards[0]
    assert not judge.weight.requires_grad
    for module in (judged, plain):
        with torch.enable_grad():
            module.evaluate({"prompts": ["a cat", "a dog"], "seeds": [0, 1]})
            module.reward_loss(["a cat", "a dog"], module.step_randomness(0)).loss.backward()
    assert judge.weight.grad is None and judge.weight.item() == 1.0
    for with_judge, without in zip(
        judged.trainable_parameters(), plain.trainable_parameters(), strict=True
    ):
        assert torch.equal(with_judge.grad, without.grad)
    # Through a whole fit with validations: the same adapter with or without the judge.
    fit(judged, tmp_path / "a", 4, [])
    fit(plain, tmp_path / "b", 4, [])
    for with_judge, without in zip(
        judged.trainable_parameters(), plain.trainable_parameters(), strict=True
    ):
        assert torch.equal(with_judge, without)
    assert judge.weight.item() == 1.0
    assert "val/heldout/learned_exposure" in judged.eval_history[-1][1]


def test_held_out_rewards_are_refused_in_one_line_unless_rewards_with_distinct_names(tiny_sd):
    from draft_lightning.base_module import check_heldout_rewards
    from draft_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"heldout_rewards\[1\]=Linear is not a draft"):
        check_heldout_rewards([Exposure(), torch.nn.Linear(1, 1)])
    with pytest.raises(ConfigError, match="the name 'exposure' is given twice"):
        check_heldout_rewards([Exposure(), Exposure(target=0.6)])
