import pytest
import torch

from draft_lightning.toy import world
from draft_lightning.toy.shape_fit import nearest_shape


def coverage(shape: str, x: float, y: float, half_width: float) -> torch.Tensor:
    distance = world.signed_distance(
        [shape], torch.tensor([[x, y]]), torch.tensor([half_width]), world.IMAGE_SIZE
    )
    return (0.5 - distance).clamp(0.0, 1.0)[0]


def painted(cover: torch.Tensor) -> torch.Tensor:
    blue, grey = torch.tensor(world.COLOURS["blue"]), torch.tensor(world.BACKGROUNDS["grey"])
    return cover * blue[:, None, None] + (1 - cover) * grey[:, None, None]


def test_the_worlds_own_pictures_are_read_as_their_shape_and_lie_close_to_one():
    # Jittered, tinted scenes: off the fit's half-pixel grid and with colours it must fit.
    scenes = world.scenes(seed=11, indices=range(90))
    fit = nearest_shape(world.render(scenes))
    assert fit.shape == [s.shape for s in scenes]
    assert fit.distance.max() < 0.02
    for shape in world.SHAPES:  # the nearest of all is the nearest of its own shape
        own = torch.tensor([s.shape == shape for s in scenes])
        assert torch.equal(fit.distance[own], fit.distance_to[shape][own])


def test_a_blob_made_of_several_shapes_is_far_from_every_clean_shape():
    bar = torch.stack([coverage("square", x, 14, 4) for x in (10, 16, 22)]).amax(dim=0)
    blobs = torch.stack(
        [
            painted(torch.maximum(bar, coverage("square", 16, 20, 4))),  # the tuned models' T
            painted(torch.maximum(coverage("circle", 11, 16, 5), coverage("circle", 21, 16, 5))),
        ]
    )
    clean = nearest_shape(torch.stack([painted(coverage("circle", 16.5, 15.5, 6.5))]))
    assert clean.shape == ["circle"] and clean.distance.item() < 1e-3
    assert (nearest_shape(blobs).distance > 0.08).all()


def test_images_of_another_size_are_refused():
    with pytest.raises(ValueError, match=r"expected \[N, 3, 32, 32\]"):
        nearest_shape(torch.zeros(2, 3, 64, 64))


def test_a_flat_or_noisy_picture_shows_no_shape_however_near_it_lies():
    flat = torch.full((3, 32, 32), 0.5)
    noise = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    circle = painted(coverage("circle", 16, 16, 6))
    fit = nearest_shape(torch.stack([flat, noise, circle]))
    assert fit.shape == [None, None, "circle"]
    assert fit.distance[0] == 0  # a flat picture is at no distance from a "shape" in its colour
    assert fit.clean(tolerance=0.05).tolist() == [False, False, True]
    assert fit.clean(tolerance=0.05, shape="square").tolist() == [False, False, False]
