"""The registered intervals and the three-way verdict, against values from statistical tables
and cases whose answer is known."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from experiments import stats


@pytest.mark.parametrize(
    "df, quantile", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)]
)
def test_t_quantiles_match_the_table(df, quantile):
    assert stats.t_quantile(df) == pytest.approx(quantile, abs=1e-4)


def test_mean_interval_is_the_t_interval_and_covers_the_truth_about_95_percent_of_the_time():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, low, high = stats.mean_interval(values)
    half = 2.7764 * statistics.stdev(values) / math.sqrt(5)
    assert (mean, low, high) == pytest.approx((3.0, 3.0 - half, 3.0 + half), abs=1e-3)
    rng = random.Random(0)
    covered = 0
    for _ in range(2000):
        _, lo, hi = stats.mean_interval([rng.gauss(0.7, 0.2) for _ in range(5)])
        covered += lo <= 0.7 <= hi
    assert 0.93 < covered / 2000 < 0.97


def test_welch_and_paired_intervals():
    first, second = [1.0, 1.2, 0.9, 1.1, 1.0], [0.5, 0.9, 0.3, 0.7, 0.6]
    difference, low, high = stats.welch_interval(first, second)
    assert difference == pytest.approx(0.44) and 0 < low < difference < high
    # Paired: the same shift in every seed is certain, whatever the spread between seeds.
    assert stats.paired_interval([x + 0.3 for x in second], second) == pytest.approx(
        (0.3, 0.3, 0.3)
    )


def test_bootstrap_is_reproducible_and_its_interval_holds_the_estimate():
    values = [0.2, 0.5, 0.4, 0.9, 0.6]
    first = stats.bootstrap([values], statistics.fmean)
    assert first == stats.bootstrap([values], statistics.fmean)
    estimate, low, high = first
    assert estimate == pytest.approx(0.52) and min(values) <= low < estimate < high <= max(values)
    # A level never reached in most resamples: the upper end is infinite.
    never = stats.bootstrap([[1.0, math.inf, math.inf]], max)
    assert never[2] == math.inf


def test_crossing_interpolates_and_is_infinite_when_never_reached():
    curve = [(0, 0.1), (5, 0.3), (10, 0.7)]
    assert stats.crossing(curve, 0.5) == pytest.approx(7.5)
    assert stats.crossing(curve, 0.1) == 0
    assert stats.crossing(curve, 0.8) == math.inf


@pytest.mark.parametrize(
    "interval, above, expected",
    [
        ((0.5, 0.1, 0.9), True, "reproduced"),
        ((-0.5, -0.9, -0.1), True, "not reproduced"),
        ((0.1, -0.1, 0.3), True, "inconclusive"),
        ((0.5, 0.2, 0.8), False, "reproduced"),  # threshold 1, claim: below it
        ((1.5, 1.0, 2.0), False, "not reproduced"),
        ((0.9, 0.5, 1.3), False, "inconclusive"),
    ],
)
def test_verdicts(interval, above, expected):
    threshold = 0.0 if above else 1.0
    assert stats.verdict(interval, threshold, above) == expected
