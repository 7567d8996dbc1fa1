"""What TensorBoard shows, read back with TensorBoard's own event reader."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import make_module
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata

from draft_lightning.data import PromptDataModule
from draft_lightning.estimators import DraftLV
from draft_lightning.evaluation.diversity import PromptDiversity, prompt_ids
from draft_lightning.rewards import Brightness, Colorfulness, WeightedSum
from draft_lightning.training.monitoring import TensorBoardMonitor

PROMPTS, SEEDS = 3, 2


def run(tmp_path, name, max_steps=4):
    torch.manual_seed(0)
    reward = WeightedSum([Brightness(), Colorfulness()], weights=[1.0, 0.5])
    module = make_module(reward=reward, estimator=DraftLV(n=2))
    logger = TensorBoardLogger(tmp_path, name=name, default_hp_metric=False)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=-1,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[TensorBoardMonitor(cell_size=48, histogram_every_n_steps=1)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = PromptDataModule(batch_size=2, num_val_prompts=PROMPTS, num_val_seeds=SEEDS)
    trainer.fit(module, data)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0})
    events.Reload()
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
    ):
        assert steps(events, tag) == [0, 1, 2, 3], tag
    for tag in ("val/reward", "val/reward/brightness", "val/reward/colorfulness", "val/diversity"):
        assert steps(events, tag) == [0, 2, 4], tag  # base model, then every 2 steps
    assert "step" not in tags


def test_val_images_are_captioned_grids_with_one_cell_per_prompt_and_seed(events):
    images = events.Images("val/images")
    assert [e.step for e in images] == [0, 2, 4]
    for event in images:
        picture = Image.open(io.BytesIO(event.encoded_image_string))
        assert picture.format == "PNG"
        strip = 3 * 12 + 4  # three caption lines
        assert (picture.width, picture.height) == (SEEDS * 48, PROMPTS * (48 + strip))
    first = Image.open(io.BytesIO(images[0].encoded_image_string))
    last = Image.open(io.BytesIO(images[-1].encoded_image_string))
    assert first.tobytes() != last.tobytes()  # training changed the images


def test_histograms_hparams_and_custom_scalars_are_present(events):
    histograms = events.Tags()["histograms"]
    for tag in (
        "train/reward_hist",
        "train/brightness_hist",
        "val/reward_hist",
        "val/colorfulness_hist",
    ):
        assert tag in histograms, tag
    plugins = events.PluginTagToContent("hparams")
    assert plugins, "hparams summary missing"
    assert custom_scalar_metadata.CONFIG_SUMMARY_TAG in events.Tags()["tensors"]
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    config = events.Tensors(custom_scalar_metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(config).item())
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["reward/brightness"] == ["^train/reward/brightness$", "^val/reward/brightness$"]
    assert charts["reward"] == ["^train/reward$", "^val/reward$"]


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
