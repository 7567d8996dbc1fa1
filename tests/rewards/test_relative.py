"""SRPO's relative reward: the prompt-reading reward's score under the positive control
phrase minus its score under the negative one, differentiable, refusing settings that would
make it 0 everywhere."""

from __future__ import annotations

import pytest
import torch

from draft_lightning.errors import ConfigError
from draft_lightning.rewards import Brightness, CLIPScoreReward, RelativeReward

PROMPTS = ["a red circle", "a dog in the snow"]


@pytest.fixture(scope="module")
def clip_score() -> CLIPScoreReward:
    return CLIPScoreReward(model="tiny:clip", pretrained="tiny:clip").freeze()


def test_it_is_the_difference_of_the_two_controlled_prompts_scores(clip_score):
    relative = RelativeReward(clip_score, positive="Real", negative="Painting").freeze()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images.requires_grad_(True)
    total, parts = relative.score(images, PROMPTS)
    with torch.no_grad():
        positive = clip_score(images, ["Real. a red circle", "Real. a dog in the snow"])
        negative = clip_score(images, ["Painting. a red circle", "Painting. a dog in the snow"])
    torch.testing.assert_close(total.detach(), positive - negative, rtol=1e-5, atol=1e-6)
    assert total.abs().min() > 0  # the tiny CLIP tells the phrases apart
    assert list(parts) == relative.part_names == ["relative_clip_score"]
    total.sum().backward()
    assert images.grad is not None and images.grad.abs().max() > 0
    assert not any(p.requires_grad for p in relative.parameters())
    features = relative.image_features(images.detach())
    torch.testing.assert_close(features, clip_score.image_features(images.detach()))


def test_a_template_puts_the_phrase_where_it_says(clip_score):
    relative = RelativeReward(clip_score, "sunny", "rainy", template="{prompt}, {control}")
    assert relative.controlled("sunny", PROMPTS) == [
        "a red circle, sunny",
        "a dog in the snow, sunny",
    ]


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"positive": "Real", "negative": "Real"}, "both 'Real'"),
        ({"positive": "a", "negative": "b", "template": "{prompt}"}, "template='{prompt}'"),
    ],
)
def test_settings_that_cannot_work_are_one_line(kwargs, text):
    with pytest.raises(ConfigError, match=text.replace("{", r"\{").replace("}", r"\}")):
        RelativeReward(Brightness(), **kwargs)
