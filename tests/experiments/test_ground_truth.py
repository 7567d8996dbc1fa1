import base64
from dataclasses import replace

import pytest
import torch

from draft_lightning.toy import world
from experiments import ground_truth

# Two scenes per caption's shape: a circle, a square and a triangle, all fully stated.
SCENES = [
    world.Scene("circle", "red", "large", "middle", "white"),
    world.Scene("square", "blue", "small", "left", "grey"),
    world.Scene("triangle", "yellow", "large", "right", "black"),
]


def stored(images: torch.Tensor, prompts: list[str]) -> dict:
    """Samples as experiments/run.py stores them (uint8 bytes, base64)."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return {
        "prompts": prompts,
        "shape": list(pixels.shape),
        "pixels": base64.b64encode(pixels.numpy().tobytes()).decode(),
    }


def smudged(scene: world.Scene) -> torch.Tensor:
    """The scene with a copy of its shape 7 pixels to the right laid over it: one shape no
    more (each pixel from whichever picture is farther from the background colour)."""
    here, there = world.render([scene, replace(scene, offset=(7.0, 0.0))])
    background = torch.tensor(world.BACKGROUNDS[scene.background])[:, None, None]
    nearer = (here - background).abs().sum(0) < (there - background).abs().sum(0)
    return torch.where(nearer, there, here)


def run(final: torch.Tensor) -> dict:
    base = world.render(SCENES)
    prompts = [s.caption for s in SCENES]
    return {"samples": {"base": stored(base, prompts), "final": stored(final, prompts)}}


def test_the_renderer_reads_circles_as_circles_and_smudges_as_no_clean_shape():
    circles = world.render(
        [world.Scene("circle", s.colour, "large", s.position, s.background) for s in SCENES]
    )
    smudges = torch.stack([smudged(scene) for scene in SCENES])
    to_circles = ground_truth.reading([run(circles), run(circles)])
    to_smudges = ground_truth.reading([run(smudges), run(smudges)])

    assert to_circles["base_as_captioned"] == 1.0  # the fit reads the base's shapes right
    assert (
        to_circles["rewarded_base"] == pytest.approx(1 / 3) and to_circles["rewarded_final"] == 1.0
    )
    assert to_circles["clean_final"] == 1.0
    assert to_smudges["clean_final"] == 0.0 and to_smudges["rewarded_final"] == 0.0
    change = to_smudges["distance_change"]
    assert change[1] > 0.03, change  # farther from any clean shape, the whole interval
    assert abs(to_circles["distance_change"][0]) < 0.01

    rows = ground_truth.rows({"tuned": [run(smudges)] * 2, "DDPO, red control": [run(circles)]})
    assert [row[0] for row in rows] == ["tuned", "DDPO, red control"]
    assert rows[0][3] == "0%" and rows[0][4] == "33% -> 0%"
    assert rows[1][3] == "100%" and rows[1][4] == "(rewards red)"  # its shapes stay clean


def test_the_sample_grid_notes_each_image_with_its_nearest_shape_and_whether_it_is_clean():
    circle = world.render([world.Scene("circle", "red", "large", "middle", "white")])
    images = (torch.cat([circle, smudged(SCENES[1])[None]]) * 255).round().to(torch.uint8)
    notes = ground_truth.grid_notes({"tuned": images}, tolerance=0.05)
    (circle_text, circle_clean), (smudge_text, smudge_clean) = notes["tuned"]
    assert circle_text.startswith("circle 0.0") and circle_clean
    assert not smudge_clean and float(smudge_text.split()[-1]) > 0.05
