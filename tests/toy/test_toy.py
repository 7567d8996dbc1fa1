"""The toy world (issue 10): deterministic scenes whose captions say what is drawn, a
classifier reward with a gradient, and a pretrained toy model that loads and fine-tunes like
SD 1.4 (trained here for a few steps at tiny sizes; `make toy` trains the real one)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
import torch
from lightning_runs import CONFIGS, lightning_fit, logged_rows, quiet_trainer

from draft_lightning.data import PromptDataModule
from draft_lightning.errors import ConfigError, ModelUnavailableError
from draft_lightning.rewards import Reward
from draft_lightning.toy import world
from draft_lightning.toy.architecture import ToyArchitecture
from draft_lightning.toy.classifier import ToyClassifier, load_classifier, save_classifier
from draft_lightning.toy.classifier_training import ClassifierTraining
from draft_lightning.toy.data import batch, loader
from draft_lightning.toy.judge import load_judge
from draft_lightning.toy.paths import atomic_folder
from draft_lightning.toy.pretrain import PretrainSettings, pretrain
from draft_lightning.toy.quality import caption_agreement
from draft_lightning.toy.rewards import ToyAttributeReward

TINY = PretrainSettings(
    classifier_steps=4,
    classifier_batch=16,
    judge_steps=3,
    judge_batch=16,
    vae_steps=3,
    vae_batch=4,
    unet_steps=3,
    unet_batch=4,
    architecture=ToyArchitecture(vae_channels=(8, 16, 16), unet_channels=(16, 32)),
    held_out_images=16,
    quality_images=4,
    quality_steps=2,
    guidance_scales=(1.0, 3.0),
)


# --- the world ------------------------------------------------------------------------------


def test_a_seed_and_an_index_determine_the_scene_and_its_pixels():
    assert world.scene(3, 17) == world.scene(3, 17)
    assert torch.equal(world.render(world.scenes(3, [17])), world.render([world.scene(3, 17)]))
    assert world.scene(3, 17) != world.scene(3, 18)
    assert world.scene(3, 17) != world.scene(4, 17)
    first, again = batch(0, 100, 8), batch(0, 100, 8)
    assert torch.equal(first["images"], again["images"]) and first["captions"] == again["captions"]


def test_every_attribute_value_occurs_and_captions_state_the_attributes():
    scenes = world.scenes(0, range(600))
    for i, name in enumerate(world.ATTRIBUTES):
        counts = Counter(s.attributes[i] for s in scenes)
        assert set(counts) == set(world.ATTRIBUTES[name])
        assert min(counts.values()) > 600 / len(counts) / 2  # roughly uniform
    s = world.Scene("triangle", "yellow", "large", "right", "grey")
    assert s.caption == "a large yellow triangle on the right of a grey background"
    assert world.parse_caption(s.caption) == dict(zip(world.ATTRIBUTES, s.attributes, strict=True))
    assert world.parse_caption("a photo of a cat") is None
    assert len(set(world.all_captions())) == 3 * 4 * 2 * 3 * 3


def test_captions_may_leave_every_attribute_but_the_shape_unsaid():
    full = world.all_captions()
    every = world.all_captions(include_partial=True)
    assert every[: len(full)] == full  # the full captions keep their order
    # shape x (each optional attribute's values or unsaid)
    assert len(set(every)) == len(every) == 3 * (4 + 1) * (2 + 1) * (3 + 1) * (3 + 1)
    caption = world.Scene("square", "blue", "large", "left", "white").caption
    assert (
        world.leave_unsaid(caption, ["colour"])
        == "a large square on the left of a white background"
    )
    assert world.leave_unsaid(caption, ["position"]) == "a large blue square on a white background"
    assert world.leave_unsaid(caption, ["background"]) == "a large blue square on the left"
    assert world.leave_unsaid(caption, world.OPTIONAL_ATTRIBUTES) == "a square"
    assert world.parse_caption("a large square on a white background") == {
        "shape": "square",
        "size": "large",
        "background": "white",
    }
    for partial in every:  # each caption parses back to the attributes it was made from
        assert world.describe(**world.parse_caption(partial)) == partial
    with pytest.raises(ValueError, match="can be left unsaid"):
        world.leave_unsaid(caption, ["shape"])


def test_unet_training_leaves_attributes_unsaid_at_the_configured_rate():
    from draft_lightning.toy.unet_training import UNetTraining

    captions = world.all_captions(include_partial=True)
    table = torch.arange(len(captions) + 1, dtype=torch.float32)[:, None, None]  # row = index
    scene = world.Scene("square", "blue", "large", "left", "white")

    def stated_counts(attribute_dropout: float) -> Counter:
        task = UNetTraining(
            torch.nn.Identity(),
            torch.nn.Identity(),
            captions,
            table,
            caption_dropout=0.0,
            attribute_dropout=attribute_dropout,
        )
        rows = task.context([scene.caption] * 2000)[:, 0, 0].long().tolist()
        return Counter(key for row in rows for key in world.parse_caption(captions[row]))

    assert stated_counts(0.0) == Counter(dict.fromkeys(world.ATTRIBUTES, 2000))
    counts = stated_counts(0.25)
    assert counts["shape"] == 2000
    for name in world.OPTIONAL_ATTRIBUTES:
        assert 1400 < counts[name] < 1600, (name, counts[name])  # about 75% kept


def test_rendered_pixels_match_the_caption():
    scenes = world.scenes(5, range(64))
    images = world.render(scenes)
    assert images.shape == (64, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    for scene, image in zip(scenes, images, strict=True):
        x, y = scene.centre()
        at_centre = image[:, int(y), int(x)]
        assert torch.allclose(at_centre, torch.tensor(scene.shape_rgb()), atol=1e-5), scene
        assert torch.allclose(image[:, 0, 0], torch.tensor(scene.background_rgb()), atol=1e-5)
        # The named colour is the nearest palette colour to the drawn one (tint is small).
        nearest = min(
            world.COLOURS, key=lambda c: torch.dist(at_centre, torch.tensor(world.COLOURS[c]))
        )
        assert nearest == scene.colour


def test_shape_size_and_position_are_what_the_caption_says():
    def draw(**kwargs):
        attrs = dict(shape="square", colour="red", size="large", position="middle")
        return world.render([world.Scene(**{**attrs, **kwargs}, background="black")])[0]

    def covered(image):  # fraction of each pixel the shape covers, from the red channel
        shape, background = world.COLOURS["red"][0], world.BACKGROUNDS["black"][0]
        return (image[0] - background) / (shape - background)

    square, circle, triangle = draw(), draw(shape="circle"), draw(shape="triangle")
    r = world.SIZES["large"]
    corner = (int(16 + 0.85 * r), int(16 + 0.85 * r))  # inside the square only
    assert covered(square)[corner] > 0.95 and covered(circle)[corner] < 0.05
    above, below = (int(16 - 0.9 * r), 16), (int(16 + 0.7 * r), 16)  # (y, x)
    assert covered(triangle)[above] > 0.5 and covered(triangle)[below] < 0.05  # points up
    assert covered(circle)[below] > 0.95 and covered(square)[below] > 0.95
    # Anti-aliased edges: some pixels are partly covered.
    assert ((covered(circle) > 0.05) & (covered(circle) < 0.95)).any()
    assert covered(draw(size="small")).sum() < 0.5 * covered(square).sum()
    centres = [covered(draw(position=p)).sum(dim=0).argmax().item() for p in world.POSITIONS]
    assert centres[0] < centres[1] < centres[2]


def test_atomic_folder_replaces_a_folder_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "1"
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


# --- the classifier and its reward ----------------------------------------------------------


@pytest.fixture(scope="module")
def colour_classifier(tmp_path_factory):
    """A narrow classifier trained for 40 steps: enough to tell colours apart."""
    torch.manual_seed(0)
    model = ToyClassifier(width=8, hidden=32)
    fixed = batch(7, 0, 64)
    before = ClassifierLoss(model)(fixed)
    quiet_trainer(40).fit(ClassifierTraining(model, lr=5e-3, max_steps=40), loader(0, 64))
    model.eval()
    assert ClassifierLoss(model)(fixed) < 0.8 * before
    return save_classifier(model, tmp_path_factory.mktemp("toy") / "classifier")


class ClassifierLoss:
    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, data) -> float:
        logits = self.model(data["images"])
        return sum(
            torch.nn.functional.cross_entropy(logits[n], data["labels"][:, i]).item()
            for i, n in enumerate(self.model.attributes)
        )


def test_classifier_round_trips_through_safetensors(colour_classifier):
    assert sorted(p.name for p in colour_classifier.iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_classifier(colour_classifier)
    again = load_classifier(colour_classifier)
    images = batch(1, 0, 4)["images"]
    for name, logits in loaded(images).items():
        assert torch.equal(logits, again(images)[name])
    config = json.loads((colour_classifier / "config.json").read_text())
    assert config["attributes"]["colour"] == list(world.COLOURS)


def test_attribute_reward_prefers_its_value_and_has_a_gradient(colour_classifier):
    reward = ToyAttributeReward("colour", "red", classifier=str(colour_classifier))
    assert reward.part_names == ["toy_colour_red"]
    assert not any(p.requires_grad for p in reward.parameters())
    red = world.render([world.Scene("circle", "red", "large", "middle", "grey")] * 2)
    blue = world.render([world.Scene("circle", "blue", "large", "middle", "grey")] * 2)
    images = torch.cat([red, blue]).requires_grad_(True)
    total, parts = reward.score(images, [""] * 4)
    assert total.shape == (4,) and torch.equal(parts["toy_colour_red"], total)
    assert ((total > 0) & (total < 1)).all()
    assert total[:2].min() > total[2:].max()
    total.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    probabilities = reward.probabilities(images.detach())
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(4))
    # Another resolution is resized to the classifier's 32x32.
    upscaled = torch.nn.functional.interpolate(red, size=64, mode="nearest")
    assert reward(upscaled, ["", ""]).shape == (2,)


def test_diversity_features_are_what_the_classifier_heads_read(colour_classifier):
    from draft_lightning.evaluation.diversity import mean_pairwise_distance

    reward = ToyAttributeReward("colour", "red", classifier=str(colour_classifier))
    red = world.render([world.Scene("circle", "red", "large", "middle", "grey")] * 2)
    mixed = world.render(
        [world.Scene("circle", c, "large", "middle", "grey") for c in ["red", "blue"]]
    )
    features = reward.image_features(torch.cat([red, mixed]))
    assert features.shape == (4, reward.classifier.hidden)
    head = reward.classifier.heads["colour"]
    torch.testing.assert_close(head(features[2:]), reward.classifier(mixed)["colour"])
    # Identical images are not diverse; a red and a blue circle are.
    assert float(mean_pairwise_distance(features[:2], cosine=True)) < 1e-6
    assert float(mean_pairwise_distance(features[2:], cosine=True)) > 1e-3


def test_temperature_softens_the_reward_by_dividing_the_logits(colour_classifier):
    sharp = ToyAttributeReward("colour", "red", classifier=str(colour_classifier))
    soft = ToyAttributeReward("colour", "red", classifier=str(colour_classifier), temperature=4.0)
    scenes = [world.Scene("square", c, "large", "left", "grey") for c in world.COLOURS]
    images = world.render(scenes)
    logits = sharp.classifier(images)["colour"]
    expected = (logits / 4.0).softmax(dim=1)[:, sharp.index]
    torch.testing.assert_close(soft(images, [""] * len(images)), expected)
    spread = lambda r: float(r(images, [""] * len(images)).std())  # noqa: E731
    assert spread(soft) < spread(sharp)  # closer to uniform: less saturated
    with pytest.raises(ConfigError, match="temperature=0.0 must be > 0"):
        ToyAttributeReward("colour", "red", classifier=str(colour_classifier), temperature=0.0)


def test_attribute_reward_builds_from_a_class_path(colour_classifier):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--reward", type=Reward)
    init_args = {"attribute": "shape", "value": "triangle", "classifier": str(colour_classifier)}
    config = parser.parse_object(
        {
            "reward": {
                "class_path": "draft_lightning.toy.rewards.ToyAttributeReward",
                "init_args": init_args,
            }
        }
    )
    instantiate = getattr(parser, "instantiate", parser.instantiate_classes)  # 4.49 renamed it
    reward = instantiate(config).reward
    assert isinstance(reward, ToyAttributeReward) and reward.name == "toy_shape_triangle"


def test_attribute_reward_refuses_unknown_names_and_a_missing_classifier(tmp_path):
    with pytest.raises(ConfigError, match="choose from shape, colour, size, position, background"):
        ToyAttributeReward("texture", "smooth")
    with pytest.raises(ConfigError, match="choose from circle, square, triangle"):
        ToyAttributeReward("shape", "hexagon")
    with pytest.raises(ModelUnavailableError, match="make toy") as error:
        ToyAttributeReward("shape", "circle", classifier=str(tmp_path / "nowhere"))
    assert "\n" not in str(error.value)


def test_caption_agreement_counts_attributes_the_images_show():
    class Oracle:
        """Reads the true labels of the scenes it was built with."""

        attributes = {k: list(v) for k, v in world.ATTRIBUTES.items()}

        def __init__(self, scenes):
            self.labels = torch.tensor([s.labels() for s in scenes])

        def __call__(self, images):
            return {
                name: torch.nn.functional.one_hot(self.labels[:, i], len(values)).float()
                for i, (name, values) in enumerate(self.attributes.items())
            }

    scenes = [
        world.Scene("circle", "red", "small", "left", "white"),
        world.Scene("square", "blue", "large", "right", "black"),
    ]
    oracle, images = Oracle(scenes), world.render(scenes)
    assert caption_agreement(oracle, images, [s.caption for s in scenes]) == {
        **dict.fromkeys(world.ATTRIBUTES, 1.0),
        "all": 1.0,
    }
    wrong_colour = replace(scenes[1], colour="green").caption
    agreement = caption_agreement(oracle, images, [scenes[0].caption, wrong_colour])
    assert agreement["colour"] == 0.5 and agreement["shape"] == 1.0 and agreement["all"] == 0.5


# --- pretraining end to end, then DRaFT on the result ---------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    report = pretrain(root / "toy-sd", root / "toy-classifier", TINY, root / "toy-judge")
    return root, report


def test_pretraining_writes_an_sd_folder_and_a_quality_report(pretrained):
    root, report = pretrained
    folder = root / "toy-sd"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir(), part
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    saved = json.loads((folder / "quality.json").read_text())
    assert saved["generation"]["by_guidance"].keys() == {"1.0", "3.0"}
    for agreement in saved["generation"]["by_guidance"].values():
        assert set(agreement) == {*world.ATTRIBUTES, "all"}
        assert all(0 <= v <= 1 for v in agreement.values())
    assert saved["generation"]["unsaid"].keys() == set(world.OPTIONAL_ATTRIBUTES)
    for attribute, unsaid in saved["generation"]["unsaid"].items():
        assert unsaid["drawn"].keys() == set(world.ATTRIBUTES[attribute])
        assert sum(unsaid["drawn"].values()) == pytest.approx(1.0)
        assert 0 <= unsaid["stated_agreement"] <= 1
    assert saved["settings"]["attribute_dropout"] == TINY.attribute_dropout
    assert set(saved["classifier_held_out_accuracy"]) == set(world.ATTRIBUTES)
    assert set(saved["judge_held_out_accuracy"]) == set(world.ATTRIBUTES)
    assert saved == json.loads(json.dumps(report))
    assert sorted(p.name for p in root.iterdir()) == ["toy-classifier", "toy-judge", "toy-sd"]
    assert (
        load_judge(root / "toy-judge").attributes
        == load_classifier(root / "toy-classifier").attributes
    )


def test_reuse_takes_the_readers_and_vae_of_an_earlier_make_toy_and_trains_the_unet(
    pretrained, tmp_path
):
    from safetensors.torch import load_file

    root, _ = pretrained
    unet_only = replace(TINY, unet_steps=2, attribute_dropout=0.5)
    new = tmp_path / "cache"
    report = pretrain(
        new / "toy-sd", new / "toy-classifier", unet_only, new / "toy-judge", reuse=root
    )
    assert report["reused"]["from"] == str(root)
    assert report["reused"]["stages"] == ["classifier", "judge", "vae"]
    for folder, weights in [
        ("toy-classifier", "model.safetensors"),
        ("toy-judge", "model.safetensors"),
        ("toy-sd/vae", "diffusion_pytorch_model.safetensors"),
    ]:
        before, after = load_file(root / folder / weights), load_file(new / folder / weights)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), folder
    unet = "toy-sd/unet/diffusion_pytorch_model.safetensors"
    before, after = load_file(root / unet), load_file(new / unet)
    assert not all(torch.equal(before[k], after[k]) for k in before)  # trained again
    assert (
        json.loads((new / "toy-sd" / "quality.json").read_text())["settings"]["attribute_dropout"]
        == 0.5
    )
    # A stage trained with other settings is not reused; nothing is written.
    with pytest.raises(ConfigError, match=r"settings.vae_steps was 3 there and is 4 here"):
        pretrain(
            tmp_path / "x" / "toy-sd",
            tmp_path / "x" / "c",
            replace(TINY, vae_steps=4),
            tmp_path / "x" / "j",
            reuse=root,
        )
    with pytest.raises(ConfigError, match="not an earlier `make toy` output"):
        pretrain(tmp_path / "y" / "toy-sd", settings=TINY, reuse=tmp_path / "nothing")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_pretrained_folder_loads_and_fine_tunes_with_the_toy_reward(pretrained):
    from draft_lightning.estimators import DraftK
    from draft_lightning.module import DraftModule
    from draft_lightning.samplers.settings import SamplingSettings

    root, report = pretrained
    torch.manual_seed(0)
    module = DraftModule(
        reward=ToyAttributeReward("shape", "circle", classifier=str(root / "toy-classifier")),
        pretrained_model=str(root / "toy-sd"),
        estimator=DraftK(1),
        sampling=SamplingSettings(num_steps=3, guidance_scale=3.0, resolution=32),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
    )
    assert module.pipeline.latent_shape == (4, 8, 8)  # the VAE downsamples by 4
    assert module.pipeline.vae.config.scaling_factor == pytest.approx(
        report["vae"]["scaling_factor"]
    )
    before = {
        n: p.detach().clone()
        for n, p in module.pipeline.denoiser.named_parameters()
        if p.requires_grad
    }
    data = PromptDataModule(
        train_prompts=world.all_captions()[:8], batch_size=2, num_val_prompts=2, num_val_seeds=1
    )
    trainer = quiet_trainer(2)
    trainer.fit(module, data)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/reward"])
    after = dict(module.pipeline.denoiser.named_parameters())
    assert before and all("lora_" in name for name in before)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_toy_model_name_resolves_to_the_make_toy_folder(pretrained, tmp_path, monkeypatch):
    from draft_lightning.models.loading import resolve_pretrained
    from draft_lightning.toy import paths

    root, _ = pretrained
    monkeypatch.setenv("DRAFT_LIGHTNING_CACHE", str(root))  # newer than the shipped model
    assert resolve_pretrained("toy:sd") == root / "toy-sd"
    monkeypatch.setenv("DRAFT_LIGHTNING_CACHE", str(tmp_path))
    monkeypatch.setattr(paths, "SHIPPED_ROOT", tmp_path / "not-shipped")
    with pytest.raises(ModelUnavailableError, match="run `make toy`") as error:
        resolve_pretrained("toy:sd")
    assert str(tmp_path / "toy-sd") in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_toy_overlay_fine_tunes_through_the_cli_and_names_make_toy_when_missing(
    pretrained, tmp_path, monkeypatch
):
    root, _ = pretrained
    monkeypatch.setenv("DRAFT_LIGHTNING_CACHE", str(root))  # toy:sd and the classifier: here
    configs = [CONFIGS / "draft_lv.yaml", CONFIGS / "toy.yaml"]
    result = lightning_fit(configs, ["--trainer.max_steps", "1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = logged_rows(tmp_path)
    assert 0 <= float(row["train/reward/toy_shape_circle"]) <= 1

    missing = ["--model.reward.init_args.classifier", str(tmp_path / "nowhere")]
    (tmp_path / "missing").mkdir()
    result = lightning_fit(configs, missing, tmp_path / "missing")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "make toy" in errors[0] and "Traceback" not in result.stderr
