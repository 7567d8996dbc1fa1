"""The renderer's reading of each method's samples (exploratory: added after the chain runs
showed that the judge reads the blobs every method ends with as circles; not registered).

Each stored validation sample is fitted with the nearest clean single shape the toy world can
render (`draft_lightning.toy.shape_fit`). A sample counts as a clean shape when it is no
farther from one than the farthest of the base model's samples of the same captions and
seeds: the base model is what "a clean shape as this model draws it" means, blur and all.
"""

from __future__ import annotations

import statistics

import torch

from draft_lightning.toy.shape_fit import ShapeFit, nearest_shape
from draft_lightning.toy.world import parse_caption
from experiments.run import decode_pixels
from experiments.stats import fmt, paired_interval


def fit(samples: dict) -> ShapeFit:
    return nearest_shape(decode_pixels(samples).float() / 255)


def grid_notes(rows: dict[str, torch.Tensor], tolerance: float) -> dict[str, list]:
    """Per row of a sample grid (uint8 images): each image's nearest clean shape and distance,
    flagged clean or not against `tolerance`."""
    notes = {}
    for name, images in rows.items():
        fitted = nearest_shape(images.float() / 255)
        clean = fitted.clean(tolerance).tolist()
        notes[name] = [
            (f"{shape or 'no shape'} {distance:.3f}", ok)
            for shape, distance, ok in zip(
                fitted.shape, fitted.distance.tolist(), clean, strict=True
            )
        ]
    return notes


def _fraction(hits: torch.Tensor) -> float:
    return hits.float().mean().item()


def reading(runs: list[dict], rewarded_shape: str = "circle") -> dict:
    """For runs of one method: the median distance to the nearest clean shape per run (base
    and end, and the paired interval of the change), the tolerance taken from the base
    model's samples, the fractions of final samples that are a clean shape and of base and
    final samples that are a clean rewarded shape, and (base model only, to show the fit
    reads shapes) how often the nearest shape is the caption's."""
    base = [fit(run["samples"]["base"]) for run in runs]
    final = [fit(run["samples"]["final"]) for run in runs]
    tolerance = max(f.distance.max().item() for f in base)

    def clean(f: ShapeFit, shape: str | None = None) -> float:
        return _fraction(f.clean(tolerance, shape))

    stated = [
        [parse_caption(p)["shape"] for p in run["samples"]["base"]["prompts"]] for run in runs
    ]
    base_median = [f.distance.median().item() for f in base]
    final_median = [f.distance.median().item() for f in final]
    return {
        "tolerance": tolerance,
        "distance_base": statistics.fmean(base_median),
        "distance_final": statistics.fmean(final_median),
        "distance_change": paired_interval(final_median, base_median),
        "clean_final": statistics.fmean(clean(f) for f in final),
        "rewarded_base": statistics.fmean(clean(f, rewarded_shape) for f in base),
        "rewarded_final": statistics.fmean(clean(f, rewarded_shape) for f in final),
        "base_as_captioned": statistics.fmean(
            _fraction(torch.tensor([a == b for a, b in zip(f.shape, s, strict=True)]))
            for f, s in zip(base, stated, strict=True)
        ),
    }


def rows(groups: dict) -> list[list[str]]:
    """One row per method; the red control rewards a colour, so its row says whether its
    shapes stay clean and has no clean-circle figure."""
    table = []
    for name, runs in groups.items():
        if any("samples" not in run for run in runs):
            continue
        read = reading(runs)
        table.append(
            [
                name,
                f"{read['distance_base']:.3f} -> {read['distance_final']:.3f}",
                fmt(read["distance_change"]),
                f"{read['clean_final']:.0%}",
                "(rewards red)"
                if "red control" in name
                else f"{read['rewarded_base']:.0%} -> {read['rewarded_final']:.0%}",
                f"{read['tolerance']:.3f}",
                f"{read['base_as_captioned']:.0%}",
            ]
        )
    return table
