"""Aggregating runs over seeds: mean and range of a recorded quantity at each evaluation."""

from __future__ import annotations

import statistics


def mean_curve(runs: list[dict], x: str, y: str, part: str = "val") -> list[tuple]:
    """(mean x, mean y, min y, max y) per evaluation index over seeds (runs evaluate at the
    same steps, so index i is the same point of training in every seed)."""
    length = min(len(run[part]) for run in runs)
    points = []
    for i in range(length):
        xs = [run[part][i][x] for run in runs]
        ys = [run[part][i][y] for run in runs]
        points.append((statistics.fmean(xs), statistics.fmean(ys), min(ys), max(ys)))
    return points


def final(runs: list[dict], y: str = "reward") -> tuple[float, float]:
    """Mean and standard deviation over seeds of the last evaluation's value."""
    values = [run["val"][-1][y] for run in runs]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def first_reaching(points: list[tuple], threshold: float, at: int = 0) -> float | None:
    """The x (point[at]) at which a mean curve first reaches `threshold`, or None."""
    for point in points:
        if point[1] >= threshold:
            return point[at]
    return None


def seconds_per_step(runs: list[dict]) -> float:
    """Median over seeds of training seconds per optimiser step (validation excluded)."""
    rates = [run["train"][-1]["seconds"] / max(1, run["train"][-1]["step"]) for run in runs]
    return statistics.median(rates)
