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
    clean = world.render(SCENES)
    generator = torch.Generator().manual_seed(0)
    noisy = clean + 0.08 * torch.randn(clean.shape, generator=generator)  # another sampler
    mirrored = clean.flip(-1)  # the same scenes drawn otherwise: a third sampler
    tuned = world.render([world.Scene("circle", "blue", "large", "middle", "white")] * 4)
    groups = {
        "DRaFT-1, T=20": group(clean, tuned),
        "full DRaFT, T=20": group(clean, tuned),
        "DRaFT-1, T=50": group(noisy, tuned),
        "DRaFT-LV, T=20": group(clean, tuned),  # back to the first sampler: its row again
        "DDPO, T=20": group(mirrored, tuned.flip(-1)),
    }

    rows, tolerances = report.sample_rows(groups, columns=[0, 2])

    later = "base model,\nsampled as the rows below"
    assert list(rows) == [
        "base model",
        "DRaFT-1, T=20",
        "full DRaFT, T=20",
        later,
        "DRaFT-1, T=50",
        later + " ",
        "DRaFT-LV, T=20",
        later + "  ",
        "DDPO, T=20",
    ]
    pixels = (mirrored[[0, 2]] * 255).round().to(torch.uint8)
    assert torch.equal(rows[later + "  "], pixels)
    assert torch.equal(rows[later + " "], rows["base model"])
    assert rows["DRaFT-1, T=20"].shape == (2, 3, 32, 32)
    # each row is read against the farthest sample of the base row it sits under
    first, second = tolerances["base model"], tolerances[later]
    assert second > first + 0.02, (first, second)
    assert tolerances["DRaFT-1, T=20"] == tolerances["full DRaFT, T=20"] == first
    assert tolerances["DRaFT-1, T=50"] == second
    assert tolerances["DRaFT-LV, T=20"] == first
    assert tolerances["DDPO, T=20"] == tolerances[later + "  "] < second


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


def test_the_time_per_part_says_so_far_until_every_planned_run_is_cached():
    done = {"cached": 15, "planned": 15, "seconds": 5400}
    running = {"cached": 10, "planned": 14, "seconds": 18000}
    assert "6.5 h so far," in report.part_line({"efficiency": done, "ddpo": running})
    complete = report.part_line({"efficiency": done, "ddpo": {**running, "cached": 14}})
    assert "6.5 h in all," in complete and "ddpo (`make experiments-ddpo`) 14 of 14" in complete
