import base64

import torch

from draft_lightning.toy import world
from experiments import report

SCENES = [
    world.Scene("circle", "red", "large", "middle", "white"),
    world.Scene("square", "blue", "small", "left", "grey"),
    world.Scene("triangle", "yellow", "large", "right", "black"),
    world.Scene("square", "green", "large", "middle", "white"),
]


def stored(images: torch.Tensor) -> dict:
    """Samples as experiments/run.py stores them (uint8 bytes, base64)."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return {
        "prompts": [s.caption for s in SCENES],
        "shape": list(pixels.shape),
        "pixels": base64.b64encode(pixels.numpy().tobytes()).decode(),
    }


def group(base: torch.Tensor, final: torch.Tensor) -> list[dict]:
    return [{"samples": {"base": stored(base), "final": stored(final)}}]


def test_a_method_that_samples_the_base_model_differently_gets_its_own_base_row_above_it():
    deterministic = world.render(SCENES)
    stochastic = deterministic.flip(-1)  # the same scenes drawn otherwise: another sampler
    tuned = world.render([world.Scene("circle", "blue", "large", "middle", "white")] * 4)
    groups = {
        "DRaFT-1, T=20": group(deterministic, tuned),
        "full DRaFT, T=20": group(deterministic, tuned),
        "DDPO (lr 0.003, clip 0.001), T=20": group(stochastic, tuned.flip(-1)),
    }

    rows, tolerances = report.sample_rows(groups, columns=[0, 2])

    assert list(rows) == [
        "base model",
        "DRaFT-1, T=20",
        "full DRaFT, T=20",
        "base model,\nas DDPO (lr 0.003, clip 0.001), T=20 samples",
        "DDPO (lr 0.003, clip 0.001), T=20",
    ]
    expected = (stochastic[[0, 2]] * 255).round().to(torch.uint8)
    assert torch.equal(rows["base model,\nas DDPO (lr 0.003, clip 0.001), T=20 samples"], expected)
    assert rows["DRaFT-1, T=20"].shape == (2, 3, 32, 32)
    assert set(tolerances) == set(rows)
    assert all(0 < t < 0.05 for t in tolerances.values())  # clean renders: near-exact fits


def test_the_setup_names_each_ddpo_sweep_setting_with_its_gain_in_the_plans_order():
    def result(start: float, end: float) -> dict:
        return {"val": [{"reward": start}, {"reward": end}]}

    sweep = {
        "DDPO (lr 0.0003, clip 0.0001)": result(0.2, 0.15),
        "DDPO (lr 0.003, clip 0.001)": None,
    }
    assert (
        report.sweep_gains(sweep, [(3e-4, 1e-4), (3e-3, 1e-3)])
        == "(0.0003, 0.0001) -0.050, (0.003, 0.001) not run"
    )
