"""The 95% intervals and the three-way verdict of experiments/preregistration.md.

Written out here because scipy is not a dependency (and torch's StudentT has no inverse cdf):
Student's t quantiles by bisecting its cdf, a plain percentile bootstrap over seeds.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20261206

Interval = tuple[float, float, float]  # (estimate, low, high)


def t_quantile(df: float) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom."""
    target = 1 - (1 - LEVEL) / 2
    low, high = 0.0, 1000.0
    for _ in range(200):
        mid = (low + high) / 2
        if _t_cdf(mid, df) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _t_cdf(x: float, df: float) -> float:
    """P(T <= x) for x >= 0: 1 - I_{df/(df+x^2)}(df/2, 1/2) / 2."""
    return 1 - _incomplete_beta(df / 2, 0.5, df / (df + x * x)) / 2


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes'
    Lentz iteration), enough for t quantiles to 1e-9."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1 - _incomplete_beta(b, a, 1 - x)
    front = (
        math.exp(
            math.lgamma(a + b)
            - math.lgamma(a)
            - math.lgamma(b)
            + a * math.log(x)
            + b * math.log(1 - x)
        )
        / a
    )
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return front * fraction


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean and its t interval over seeds (a single value: an unbounded interval)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, -math.inf, math.inf
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_interval(after: Sequence[float], before: Sequence[float]) -> Interval:
    """Mean of the per-seed differences `after - before` and its t interval."""
    return mean_interval([a - b for a, b in zip(after, before, strict=True)])


def welch_interval(first: Sequence[float], second: Sequence[float]) -> Interval:
    """Difference of means first - second with Welch's t interval (unequal variances)."""
    difference = statistics.fmean(first) - statistics.fmean(second)
    if len(first) < 2 or len(second) < 2:
        return difference, -math.inf, math.inf
    v1 = statistics.variance(first) / len(first)
    v2 = statistics.variance(second) / len(second)
    if v1 + v2 == 0:
        return difference, difference, difference
    df = (v1 + v2) ** 2 / (v1**2 / (len(first) - 1) + v2**2 / (len(second) - 1))
    half = t_quantile(df) * math.sqrt(v1 + v2)
    return difference, difference - half, difference + half


def bootstrap(groups: Sequence[Sequence], statistic: Callable[..., float]) -> Interval:
    """`statistic(*groups)` and its percentile interval, each group (a method's seeds)
    resampled with replacement independently; +inf values (a level never reached) sort last."""
    rng = random.Random(BOOTSTRAP_SEED)
    estimate = statistic(*groups)
    draws = sorted(
        statistic(*[[group[rng.randrange(len(group))] for _ in group] for group in groups])
        for _ in range(BOOTSTRAP_RESAMPLES)
    )
    tail = (1 - LEVEL) / 2
    low = draws[int(math.floor(tail * (len(draws) - 1)))]
    high = draws[int(math.ceil((1 - tail) * (len(draws) - 1)))]
    return estimate, low, high


def crossing(points: Sequence[tuple[float, float]], level: float) -> float:
    """The x at which a curve of (x, y) points first reaches `level`, interpolated linearly
    from the point before; +inf if it never does."""
    previous = None
    for x, y in points:
        if y >= level:
            if previous is None or previous[1] >= level:
                return x
            x0, y0 = previous
            return x0 + (x - x0) * (level - y0) / (y - y0)
        previous = (x, y)
    return math.inf


def verdict(interval: Interval, threshold: float, above: bool = True) -> str:
    """reproduced: the whole interval on the claim's side of `threshold` (above it when
    `above`); not reproduced: the whole interval on the other side; else inconclusive."""
    _, low, high = interval
    if above:
        return (
            "reproduced"
            if low > threshold
            else "not reproduced"
            if high <= threshold
            else ("inconclusive")
        )
    return (
        "reproduced"
        if high < threshold
        else "not reproduced"
        if low >= threshold
        else ("inconclusive")
    )


def fmt(interval: Interval, digits: int = 3) -> str:
    """`estimate [low, high]`."""
    estimate, low, high = interval
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
