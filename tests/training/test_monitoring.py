"""What a run shows, read back the way TensorBoard reads it (its event reader, its hparams
plugin, its custom-scalars layout), and through the other loggers."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import make_module
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageFont
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard_reading import custom_scalar_charts, hparams_columns, hparams_sessions

from draft_lightning.data import PromptDataModule
from draft_lightning.estimators import DraftLV
from draft_lightning.evaluation.diversity import PromptDiversity, prompt_ids
from draft_lightning.evaluation.image_grid import shorten_middle, wrap_caption
from draft_lightning.rewards import Brightness, Colorfulness, Reward, WeightedSum
from draft_lightning.rewards.pixel import luma
from draft_lightning.training.hacking_guard import HackingGuard
from draft_lightning.training.monitoring import RunMonitor

PROMPTS, SEEDS = 3, 2


class Contrast(Reward):
    """Standard deviation of each image's luma."""

    def forward(self, images, prompts):
        return luma(images.float()).flatten(1).std(dim=1)


def run(tmp_path, name, max_steps=4):
    torch.manual_seed(0)
    reward = WeightedSum([Brightness(), Colorfulness()], weights=[1.0, 0.5])
    # A held-out reward the run never trains on, watched by the hacking guard.
    module = make_module(reward=reward, estimator=DraftLV(n=2), heldout_rewards=[Contrast()])
    logger = TensorBoardLogger(tmp_path, name=name)  # default_hp_metric as a user has it
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=-1,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[RunMonitor(cell_size=48, histogram_every_n_steps=1), HackingGuard()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = PromptDataModule(batch_size=2, num_val_prompts=PROMPTS, num_val_seeds=SEEDS)
    trainer.fit(module, data)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    events.logdir = logger.root_dir
    return events


@pytest.fixture(scope="module")
def events(tiny_sd, tmp_path_factory):
    return run(tmp_path_factory.mktemp("tb"), "a")


def steps(events, tag):
    return [e.step for e in events.Scalars(tag)]


def test_scalars_at_the_expected_steps(events):
    tags = events.Tags()["scalars"]
    for tag in (
        "train/reward",
        "train/reward/brightness",
        "train/reward/colorfulness",
        "train/loss",
        "train/grad_norm",
        "train/reward_std",
        "train/steps_per_second",
        "train/peak_memory_gib",
        "train/lora_update_norm",
        "train/lora_delta_norm",
    ):
        assert steps(events, tag) == [0, 1, 2, 3], tag
    for tag in (
        "val/reward",
        "val/reward/brightness",
        "val/reward/colorfulness",
        "val/diversity",
        "val/reward_gain",
        "val/heldout/contrast",
        "val/hacking",
    ):
        assert steps(events, tag) == [0, 2, 4], tag  # base model, then every 2 steps
    assert "step" not in tags and "hp_metric" not in tags
    reward = [e.value for e in events.Scalars("val/reward")]
    gain = [e.value for e in events.Scalars("val/reward_gain")]
    assert gain == pytest.approx([r - reward[0] for r in reward], abs=1e-6)
    assert all(e.value > 0 for e in events.Scalars("train/reward_std"))
    # The adapter starts as the identity (B = 0) and moves by about one step's update.
    delta = [e.value for e in events.Scalars("train/lora_delta_norm")]
    assert delta[0] > 0 and all(e.value > 0 for e in events.Scalars("train/lora_update_norm"))


def test_val_images_are_captioned_grids_with_one_cell_per_prompt_and_seed(events):
    images = events.Images("val/images")
    assert [e.step for e in images] == [0, 2, 4]
    for event in images:
        picture = Image.open(io.BytesIO(event.encoded_image_string))
        assert picture.format == "PNG"
        assert picture.width == SEEDS * 48
        assert (picture.height - PROMPTS * 48) % PROMPTS == 0  # one caption strip per row
        assert picture.height - PROMPTS * 48 >= PROMPTS * (2 * 12 + 4)  # reward, seed, prompt
    first = Image.open(io.BytesIO(images[0].encoded_image_string))
    last = Image.open(io.BytesIO(images[-1].encoded_image_string))
    assert first.tobytes() != last.tobytes()  # training changed the images


def test_captions_keep_the_whole_prompt():
    font = ImageFont.load_default()
    prompt = "a watercolour painting of a lighthouse on a cliff at dawn, gulls overhead"
    lines = wrap_caption(f"0.512 seed 0\n{prompt}", font, 64 - 4)
    assert lines[0] == "0.512 seed 0"  # the seed stays beside its reward in a 64 px cell
    assert " ".join(lines[1:]) == prompt  # every word, in order, wrapped at word boundaries
    assert all(font.getlength(line) <= 60 for line in lines)
    short = shorten_middle(prompt, 40)
    assert len(short) <= 40 and short.startswith("a watercolour") and short.endswith("overhead")


def test_histograms_are_not_duplicated(events):
    histograms = events.Tags()["histograms"]
    for tag in (
        "train/reward_hist",
        "train/brightness_hist",
        "train/colorfulness_hist",
        "val/reward_hist",
        "val/colorfulness_hist",
        "val/heldout/contrast_hist",
    ):
        assert tag in histograms, tag  # two rewards: the total and each part


def test_hparams_table_shows_the_runs_settings_and_final_metrics(events):
    """Read by TensorBoard's hparams plugin, with a data module and Lightning's default
    hp_metric: one session, the run's settings, the final validation values."""
    sessions = hparams_sessions(events.logdir)
    assert len(sessions) == 1
    hparams, metrics = sessions[0]["hparams"], sessions[0]["metrics"]
    expected = {
        "estimator": "DraftLV(n=2, include_base_sample=False, renoise_steps=1)",
        "estimator.n": 2,
        "model": "tiny:sd",
        "reward": "brightness + 0.5 colorfulness",
        "lora.rank": 8,
        "lora.alpha": 8,
        "lr": 4e-4,
        "batch_size": 2,
        "sampling.num_steps": 4,
        "sampling.guidance_scale": 3.0,
    }
    for key, value in expected.items():
        assert hparams[key] == pytest.approx(value) if not isinstance(value, str) else value, key
    assert not any(key.startswith("_") for key in hparams)  # no _instantiator, _class_path
    for tag in ("val/reward", "val/reward/brightness", "val/reward/colorfulness",
                "val/diversity", "val/reward_gain", "val/heldout/contrast",
                "val/hacking"):  # fmt: skip
        assert metrics[tag] == pytest.approx(events.Scalars(tag)[-1].value), tag
    assert "hp_metric" not in metrics
    # The table opens with five settings: estimator, LoRA rank, learning rate, model, reward.
    assert hparams_columns(events.logdir)[:5] == ["estimator", "lora.rank", "lr", "model", "reward"]


def test_custom_scalars_layout_answers_the_questions(events):
    assert custom_scalar_metadata.CONFIG_SUMMARY_TAG in events.Tags()["tensors"]
    charts = custom_scalar_charts(events)
    assert charts["reward: train (every step) and validation"] == ["^train/reward$", "^val/reward$"]
    assert charts["validation reward"] == ["^val/reward$"]  # on its own axis
    assert charts["held-out rewards (never trained on) beside the validation reward"] == [
        "^val/reward$",
        "^val/heldout/contrast$",
    ]
    assert charts["reward hacking: the guard's flag (1 = flagged)"] == ["^val/hacking$"]
    assert charts["reward/brightness: train and validation"] == [
        "^train/reward/brightness$",
        "^val/reward/brightness$",
    ]
    assert charts["gradient norm before clipping (use the log-scale button)"] == [
        "^train/grad_norm$"
    ]
    assert charts["loss"] == ["^train/loss$"]
    tags = events.Tags()["scalars"]
    for title, patterns in charts.items():
        if title != "learning rate":  # LearningRateMonitor's, not in this run
            assert all(p.strip("^$") in tags for p in patterns), title


def test_two_runs_with_the_same_seed_log_identical_images(events, tmp_path):
    again = run(tmp_path, "b", max_steps=2)
    first = [e.encoded_image_string for e in events.Images("val/images")][:2]
    second = [e.encoded_image_string for e in again.Images("val/images")]
    assert first == second


def test_diversity_is_zero_for_identical_images_and_grows_with_spread():
    ids = prompt_ids(["a", "a", "a", "b", "b", "b"])
    base = torch.rand(1, 3 * 8 * 8).repeat(6, 1)
    values = []
    for spread in (0.0, 0.05, 0.2):
        metric = PromptDiversity()
        metric.update(
            base + spread * torch.randn(base.shape, generator=torch.Generator().manual_seed(0)), ids
        )
        values.append(float(metric.compute()))
    assert values[0] == pytest.approx(0, abs=1e-6)
    assert 0 < values[1] < values[2]
    cosine = PromptDiversity(cosine=True)
    cosine.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), prompt_ids(["a", "a"]))
    assert float(cosine.compute()) == pytest.approx(1.0)


def test_validation_rewards_per_prompt_category(tiny_sd, tmp_path):
    prompts = tmp_path / "styled.jsonl"
    rows = [("a cat", "photo"), ("a dog", "photo"), ("a castle", "anime")]
    prompts.write_text("".join(f'{{"prompt": "{p}", "style": "{s}"}}\n' for p, s in rows))
    module = make_module(reward=Brightness(), category_field="style")
    data = PromptDataModule(
        train_prompts=str(prompts), val_prompts=str(prompts), metadata_fields=["style"],
        batch_size=2, num_val_seeds=2,
    )  # fmt: skip
    logger = TensorBoardLogger(tmp_path, name="styles")
    trainer = Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False,
                      enable_model_summary=False)  # fmt: skip
    trainer.validate(module, data)
    metrics = module.eval_history[-1][1]
    evaluation = module.last_evaluation
    for style in ("photo", "anime"):
        rewards = [
            s["reward"]
            for s, c in zip(evaluation["scores"], evaluation["categories"], strict=True)
            if c == style
        ]
        assert len(rewards) == 2 * sum(1 for _, s in rows if s == style)
        assert metrics[f"val/reward_by_style/{style}"] == pytest.approx(sum(rewards) / len(rewards))
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "val/reward_by_style/anime" in events.Tags()["scalars"]


def test_one_reward_has_one_histogram(tiny_sd, tmp_path):
    module = make_module(reward=Brightness())
    logger = TensorBoardLogger(tmp_path, name="one")
    trainer = Trainer(accelerator="cpu", logger=logger, callbacks=[RunMonitor()],
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.validate(module, PromptDataModule(batch_size=2, num_val_prompts=2, num_val_seeds=1))
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert events.Tags()["histograms"] == ["val/reward_hist"]
