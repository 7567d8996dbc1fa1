"""The toy judge: trained on rendered ground truth like the reward's classifier but sharing
nothing else with it, saved as safetensors, usable as a Reward from YAML."""

from __future__ import annotations

import pytest
import torch
from lightning_runs import quiet_trainer

from draft_lightning.errors import ConfigError, ModelUnavailableError
from draft_lightning.rewards import Reward
from draft_lightning.toy import world
from draft_lightning.toy.classifier import ToyClassifier, save_classifier
from draft_lightning.toy.classifier_training import ClassifierTraining
from draft_lightning.toy.data import batch, loader
from draft_lightning.toy.judge import ToyJudge, ToyJudgeReward, load_judge, save_judge


@pytest.fixture(scope="module")
def colour_judge(tmp_path_factory):
    """A narrow judge trained for 40 steps: enough to tell colours apart."""
    torch.manual_seed(1)
    model = ToyJudge(width=8)
    quiet_trainer(40).fit(ClassifierTraining(model, lr=5e-3, max_steps=40, seed=1), loader(1, 64))
    return save_judge(model.eval(), tmp_path_factory.mktemp("toy") / "judge")


def test_the_judge_is_another_network_than_the_reward_classifier():
    judge, classifier = ToyJudge(), ToyClassifier()
    judge_shapes = {tuple(p.shape) for p in judge.features.parameters()}
    classifier_shapes = {tuple(p.shape) for p in classifier.features.parameters()}
    assert not judge_shapes & classifier_shapes  # no layer of one fits the other
    images = batch(2, 0, 3)["images"]
    logits = judge(images)
    assert {k: v.shape for k, v in logits.items()} == {
        name: (3, len(values)) for name, values in world.ATTRIBUTES.items()
    }


def test_judge_round_trips_and_its_reward_prefers_its_value(colour_judge):
    loaded, again = load_judge(colour_judge), load_judge(colour_judge)
    images = batch(3, 0, 4)["images"]
    for name, logits in loaded(images).items():
        assert torch.equal(logits, again(images)[name])
    reward = ToyJudgeReward("colour", "red", judge=str(colour_judge))
    assert reward.part_names == ["judge_colour_red"] and isinstance(reward, Reward)
    assert not any(p.requires_grad for p in reward.parameters())
    red = world.render([world.Scene("circle", "red", "large", "middle", "grey")] * 2)
    blue = world.render([world.Scene("circle", "blue", "large", "middle", "grey")] * 2)
    scores = reward(torch.cat([red, blue]), [""] * 4)
    assert scores[:2].min() > scores[2:].max()
    assert reward.verdicts(torch.cat([red, blue]), [""] * 4).tolist() == [True, True, False, False]
    # value "caption": judged against what each prompt states.
    stated = ToyJudgeReward("colour", "caption", judge=str(colour_judge))
    red_caption = world.Scene("square", "red", "small", "left", "white").caption
    blue_caption = world.Scene("square", "blue", "small", "left", "white").caption
    pictures, captions = torch.cat([red, blue]), [red_caption, blue_caption] * 2
    assert stated.verdicts(pictures, captions).tolist() == [True, False, False, True]
    torch.testing.assert_close(stated(pictures[:1], captions[:1]), scores[:1])
    # A caption that leaves the colour unsaid: any colour agrees with it.
    colourless = world.leave_unsaid(red_caption, ["colour"])
    assert stated.verdicts(pictures[2:3], [colourless]).tolist() == [True]
    assert stated(pictures[2:3], [colourless]).tolist() == [1.0]
    assert stated(pictures[2:3], [blue_caption]).item() > 0.5  # the blue picture, judged blue
    with pytest.raises(ConfigError, match="needs toy world captions"):
        stated(pictures[:1], ["a cat"])


def test_judge_builds_from_a_class_path(colour_judge):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--reward", type=Reward)
    config = parser.parse_object(
        {
            "reward": {
                "class_path": "draft_lightning.toy.judge.ToyJudgeReward",
                "init_args": {"attribute": "colour", "value": "blue", "judge": str(colour_judge)},
            }
        }
    )
    instantiate = getattr(parser, "instantiate", parser.instantiate_classes)  # 4.49 renamed it
    assert instantiate(config).reward.name == "judge_colour_blue"


def test_judge_refuses_a_missing_folder_the_reward_classifier_and_unknown_values(tmp_path):
    with pytest.raises(ModelUnavailableError, match="make toy") as error:
        ToyJudgeReward("shape", "circle", judge=str(tmp_path / "nowhere"))
    assert "\n" not in str(error.value)
    classifier = save_classifier(ToyClassifier(width=4, hidden=8), tmp_path / "classifier")
    with pytest.raises(ConfigError, match="holds no toy judge"):
        ToyJudgeReward("shape", "circle", judge=str(classifier))
    with pytest.raises(ConfigError, match="choose from circle, square, triangle"):
        ToyJudgeReward("shape", "hexagon", judge=str(tmp_path))
