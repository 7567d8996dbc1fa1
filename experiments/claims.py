"""The claims of experiments/preregistration.md, each judged by its registered rule.

Each function takes the runs it needs (lists over seeds of experiments.run results) and
returns a Judgement: the metric with its 95% interval, the threshold, the verdict
(reproduced / not reproduced / inconclusive) and the numbers behind it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from experiments.stats import (
    Interval,
    bootstrap,
    crossing,
    fmt,
    mean_interval,
    paired_interval,
    verdict,
    welch_interval,
)

MAX_EXTRA_COST = 1.5  # claim 1: DRaFT-LV's step at most 1.5x DRaFT-1's
FAR_FEWER = 10.0  # claim 5: an order of magnitude fewer reward queries


@dataclass(frozen=True)
class Judgement:
    metric: str
    interval: Interval
    threshold: str
    verdict: str
    evidence: str


def mean_curve(runs: list[dict], x: str = "step", y: str = "reward") -> list[tuple[float, float]]:
    """(mean x, mean y) per evaluation index over seeds (runs evaluate at the same points)."""
    length = min(len(run["val"]) for run in runs)
    return [
        (
            statistics.fmean(run["val"][i][x] for run in runs),
            statistics.fmean(run["val"][i][y] for run in runs),
        )
        for i in range(length)
    ]


def final_values(runs: list[dict], y: str = "reward") -> list[float]:
    return [run["val"][-1][y] for run in runs]


def base_values(runs: list[dict], y: str = "reward") -> list[float]:
    return [run["val"][0][y] for run in runs]


def reward_gain(run: dict) -> float:
    """A run's final validation reward minus its step-0 reward (DDPO's sweep is chosen by it)."""
    return run["val"][-1]["reward"] - run["val"][0]["reward"]


def seconds_per_step(runs: list[dict]) -> float:
    """Median over seeds of training seconds per optimiser step (evaluation excluded)."""
    return statistics.median(
        run["train"][-1]["seconds"] / max(1, run["train"][-1]["step"]) for run in runs
    )


def area_per_step(run: dict) -> float:
    """Claim 2's metric: the mean validation reward over the evaluations after step 0."""
    return statistics.fmean(e["reward"] for e in run["val"] if e["step"] > 0)


# --- claim 1 ----------------------------------------------------------------------------


def lv_fewer_steps(one: list[dict], lv: list[dict]) -> Judgement:
    budget = one[0]["val"][-1]["step"]

    def ratio(one_runs: list[dict], lv_runs: list[dict]) -> float:
        target = statistics.fmean(final_values(one_runs))
        return crossing(mean_curve(lv_runs), target) / budget

    interval = bootstrap([one, lv], ratio)
    cost = seconds_per_step(lv) / seconds_per_step(one)
    ruled = verdict(interval, 1.0, above=False)
    if cost > MAX_EXTRA_COST:
        ruled = "not reproduced"
    evidence = (
        f"DRaFT-1's mean final reward {statistics.fmean(final_values(one)):.3f} (step {budget}) "
        f"is reached by DRaFT-LV's mean curve at step {interval[0] * budget:.1f}; "
        f"steps ratio {fmt(interval, 2)}; DRaFT-LV's step costs {cost:.2f}x DRaFT-1's "
        f"(allowed: <= {MAX_EXTRA_COST}x)"
    )
    return Judgement("steps ratio DRaFT-LV / DRaFT-1", interval, "< 1", ruled, evidence)


# --- claim 2 ----------------------------------------------------------------------------


def small_k_beats_full(small: list[dict], full: list[dict], label: str = "K=1") -> Judgement:
    interval = welch_interval([area_per_step(r) for r in small], [area_per_step(r) for r in full])
    evidence = (
        f"mean reward over evaluations, {label} "
        f"{fmt(mean_interval([area_per_step(r) for r in small]))} vs full DRaFT "
        f"{fmt(mean_interval([area_per_step(r) for r in full]))}; difference {fmt(interval)}"
    )
    return Judgement(
        f"reward area {label} - full DRaFT", interval, "> 0", verdict(interval, 0.0), evidence
    )


# --- claim 3 ----------------------------------------------------------------------------


def gradient_norm_grows(per_seed: list[dict[str, list[float]]]) -> Judgement:
    """per_seed: one {K: norms over fixed batches} per seed."""
    ks = sorted(per_seed[0], key=int)
    first, last = ks[0], ks[-1]

    def ratio(seeds: list[dict[str, list[float]]]) -> float:
        low = statistics.fmean(v for seed in seeds for v in seed[first])
        high = statistics.fmean(v for seed in seeds for v in seed[last])
        return high / low if low > 0 else math.inf

    interval = bootstrap([per_seed], ratio)
    means = [statistics.fmean(v for seed in per_seed for v in seed[k]) for k in ks]
    evidence = (
        "mean gradient norm at K = "
        + ", ".join(f"{k}: {m:.3g}" for k, m in zip(ks, means, strict=True))
        + f"; ratio K={last} / K={first} {fmt(interval, 2)}"
    )
    return Judgement(
        f"norm ratio K={last} / K={first}", interval, "> 1", verdict(interval, 1.0), evidence
    )


# --- claims 4 and 5 -----------------------------------------------------------------------


def learns(runs: list[dict]) -> Judgement:
    """Claim 4: the final validation reward gain over step 0, paired by seed."""
    interval = paired_interval(final_values(runs), base_values(runs))
    queries = statistics.fmean(run["val"][-1]["queries"] for run in runs)
    evidence = (
        f"validation reward {statistics.fmean(base_values(runs)):.3f} at step 0, "
        f"{statistics.fmean(final_values(runs)):.3f} after {queries:.0f} reward queries; "
        f"gain {fmt(interval)}"
    )
    return Judgement("reward gain", interval, "> 0", verdict(interval, 0.0), evidence)


def queries_to_gain(runs: list[dict], gain: float) -> float:
    """Reward queries the mean curve needs to gain `gain` over its own step-0 value."""
    curve = mean_curve(runs, "queries", "reward")
    return crossing(curve, curve[0][1] + gain)


def fewer_queries_than_ddpo(one: list[dict], ddpo: list[dict]) -> Judgement:
    budget = statistics.fmean(run["val"][-1]["queries"] for run in ddpo)

    def ratio(one_runs: list[dict], ddpo_runs: list[dict]) -> float:
        gain = 0.5 * (
            statistics.fmean(final_values(one_runs)) - statistics.fmean(base_values(one_runs))
        )
        needed = queries_to_gain(one_runs, gain)
        if math.isinf(needed):
            return 0.0  # the gradient method never gains half its own final gain: no lead
        return min(queries_to_gain(ddpo_runs, gain), budget) / needed

    interval = bootstrap([one, ddpo], ratio)
    gain = 0.5 * (statistics.fmean(final_values(one)) - statistics.fmean(base_values(one)))
    ddpo_needed = queries_to_gain(ddpo, gain)
    ddpo_gain = paired_interval(final_values(ddpo), base_values(ddpo))
    evidence = (
        f"g = {gain:.3f}; DRaFT-1's mean curve gains g after {queries_to_gain(one, gain):.0f} "
        "queries, DDPO's "
        + (f"after {ddpo_needed:.0f}" if math.isfinite(ddpo_needed) else f"never in {budget:.0f}")
        + f" (ratio {fmt(interval, 1)}"
        + (", a lower bound: DDPO's budget counted" if math.isinf(ddpo_needed) else "")
        + f"); DDPO's own gain after {budget:.0f} queries {fmt(ddpo_gain)}"
    )
    return Judgement(
        "queries ratio DDPO / DRaFT-1",
        interval,
        f">= {FAR_FEWER:g}",
        verdict(interval, FAR_FEWER),
        evidence,
    )


# --- claim 6 ----------------------------------------------------------------------------


def diversity_path(run: dict) -> list[tuple[float, float]]:
    """(validation reward, empty prompt's diversity) at each evaluation of a tracked run."""
    return [(e["reward"], e["unconditional"]["diversity"]) for e in run["val"]]


def diversity_when_reaching(path: list[tuple[float, float]], reward: float) -> float:
    """Diversity where the path first reaches `reward` (linear between evaluations); the
    path's last diversity if it never does."""
    reached = crossing([(d, r) for r, d in path], reward)  # x = diversity, y = reward
    return path[-1][1] if math.isinf(reached) else reached


def diversity_lost(lv: list[dict]) -> Judgement:
    """6a: final minus step-0 diversity of the empty prompt's samples, paired by seed."""
    paths = [diversity_path(run) for run in lv]
    interval = paired_interval([p[-1][1] for p in paths], [p[0][1] for p in paths])
    evidence = (
        f"empty prompt's diversity {statistics.fmean(p[0][1] for p in paths):.4f} at step 0, "
        f"{statistics.fmean(p[-1][1] for p in paths):.4f} after training; change {fmt(interval, 4)}"
    )
    return Judgement("diversity change", interval, "< 0", verdict(interval, 0.0, False), evidence)


def keeps_more_than_early_stopping(
    lv: list[dict], remedy: list[tuple[float, float]], name: str
) -> Judgement:
    """6b/6c: per seed, the remedy's (reward, diversity) against the same seed's
    unregularised path at that reward."""
    paths = [diversity_path(run) for run in lv]
    stopped = [diversity_when_reaching(p, r) for p, (r, _) in zip(paths, remedy, strict=True)]
    interval = paired_interval([d for _, d in remedy], stopped)
    evidence = (
        f"{name}: reward {statistics.fmean(r for r, _ in remedy):.3f}, diversity "
        f"{statistics.fmean(d for _, d in remedy):.4f}; unregularised DRaFT-LV stopped at the "
        f"same reward: {statistics.fmean(stopped):.4f}; difference {fmt(interval, 4)}"
    )
    return Judgement("diversity difference", interval, "> 0", verdict(interval, 0.0), evidence)


# --- reward hacking check -----------------------------------------------------------------


def hacking(runs: list[dict]) -> dict:
    """Reward gain and the judge's gain (paired intervals), the judge's verdict fractions at
    the base model and at the end, and the flag: reward up while the judge is not."""
    reward_gain = paired_interval(final_values(runs), base_values(runs))
    judge_gain = paired_interval(final_values(runs, "judge"), base_values(runs, "judge"))

    def shown(stage: str) -> float:
        return statistics.fmean(
            statistics.fmean(run["samples"][stage]["judge_verdicts"]) for run in runs
        )

    flagged = verdict(reward_gain, 0.0) == "reproduced" and verdict(judge_gain, 0.0) != (
        "reproduced"
    )
    return {
        "reward_gain": reward_gain,
        "judge_gain": judge_gain,
        "shown_base": shown("base"),
        "shown_final": shown("final"),
        "flagged": flagged,
    }


PROMPT_LOST = -0.10  # amendment 1: a method that loses more than 1 in 10 caption attributes


def prompt_lost(base: list[float], final: list[float]) -> dict:
    """Amendment 1's flag: the change in caption agreement (end minus step 0, paired by seed)
    and whether its whole interval lies below PROMPT_LOST."""
    change = paired_interval(final, base)
    return {"change": change, "flagged": change[2] < PROMPT_LOST}
