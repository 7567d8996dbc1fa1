"""The registered rules (experiments/preregistration.md) that turn runs into verdicts, checked
on made-up runs where the right verdict is known."""

from __future__ import annotations

import math

import pytest

from experiments import claims


def run(
    rewards: list[float],
    queries_per_eval: int = 40,
    seconds_per_step: float = 1.0,
    every: int = 5,
    judge: list[float] | None = None,
    diversity: list[float] | None = None,
) -> dict:
    val = [
        {
            "step": every * i,
            "queries": queries_per_eval * i,
            "reward": r,
            "judge": (judge or rewards)[i],
            "unconditional": {"diversity": (diversity or [0.5] * len(rewards))[i]},
        }
        for i, r in enumerate(rewards)
    ]
    steps = val[-1]["step"]
    return {"val": val, "train": [{"step": steps, "seconds": seconds_per_step * steps}]}


def seeds(curves: list[list[float]], **options) -> list[dict]:
    return [run(curve, **options) for curve in curves]


ONE = seeds(
    [[0.2, 0.4, 0.6], [0.2, 0.45, 0.62], [0.2, 0.38, 0.58], [0.2, 0.42, 0.6], [0.2, 0.41, 0.61]]
)


def test_lv_reaching_one_final_reward_early_and_cheaply_is_reproduced():
    fast = seeds(
        [[0.2, 0.7, 0.8], [0.2, 0.68, 0.79], [0.2, 0.72, 0.81], [0.2, 0.7, 0.8], [0.2, 0.69, 0.8]],
        seconds_per_step=1.1,
    )
    judged = claims.lv_fewer_steps(ONE, fast)
    assert judged.verdict == "reproduced", judged.evidence
    # DRaFT-1 ends at 0.602; the LV mean curve (0.2, 0.698, ...) reaches it at step ~4.0.
    assert judged.interval[0] == pytest.approx((0.602 - 0.2) / (0.698 - 0.2) * 5 / 10, abs=1e-3)
    assert judged.interval[2] < 1
    # Too expensive per step: not reproduced, however fast.
    costly = seeds([[0.2, 0.7, 0.8]] * 5, seconds_per_step=2.0)
    assert claims.lv_fewer_steps(ONE, costly).verdict == "not reproduced"
    # Never reaching DRaFT-1's final reward: the interval sits at infinity.
    slow = seeds([[0.2, 0.3, 0.4]] * 5)
    judged = claims.lv_fewer_steps(ONE, slow)
    assert judged.verdict == "not reproduced" and math.isinf(judged.interval[1])
    # Some seeds fast, some never: the interval straddles 1.
    mixed = seeds(
        [[0.2, 0.9, 0.95], [0.2, 0.3, 0.35], [0.2, 0.9, 0.95], [0.2, 0.3, 0.4], [0.2, 0.5, 0.55]]
    )
    assert claims.lv_fewer_steps(ONE, mixed).verdict == "inconclusive"


def test_small_k_is_judged_on_the_area_under_the_curve_with_welch():
    full = seeds([[0.2, 0.3, 0.6]] * 3 + [[0.2, 0.31, 0.6], [0.2, 0.29, 0.61]])
    judged = claims.small_k_beats_full(ONE, full)
    # Same final reward, but K = 1 rose earlier: the area (mean of steps 5 and 10) is higher.
    assert judged.verdict == "reproduced", judged.evidence
    at_5 = (0.4 + 0.45 + 0.38 + 0.42 + 0.41) / 5 - 0.3
    at_10 = (0.6 + 0.62 + 0.58 + 0.6 + 0.61) / 5 - (0.6 * 4 + 0.61) / 5
    assert judged.interval[0] == pytest.approx((at_5 + at_10) / 2, abs=1e-9)
    better_full = seeds(
        [[0.2, 0.8, 0.9], [0.2, 0.82, 0.9], [0.2, 0.79, 0.9], [0.2, 0.8, 0.91], [0.2, 0.81, 0.9]]
    )
    assert claims.small_k_beats_full(ONE, better_full).verdict == "not reproduced"
    noisy = seeds(
        [[0.2, 0.1, 0.9], [0.2, 0.9, 0.1], [0.2, 0.5, 0.5], [0.2, 0.6, 0.6], [0.2, 0.4, 0.4]]
    )
    assert claims.small_k_beats_full(ONE, noisy).verdict == "inconclusive"


def test_gradient_norm_growth_ratio_from_k1_to_kt():
    growing = [{"1": [0.1, 0.12], "5": [0.4], "20": [2.0, 2.2]} for _ in range(5)]
    judged = claims.gradient_norm_grows(growing)
    assert judged.verdict == "reproduced" and judged.interval[0] == pytest.approx(2.1 / 0.11)
    shrinking = [{"1": [1.0], "20": [0.5 + 0.01 * i]} for i in range(5)]
    assert claims.gradient_norm_grows(shrinking).verdict == "not reproduced"


def test_positive_control_needs_a_gain_whose_interval_excludes_zero():
    learned = seeds([[0.3, 0.5], [0.25, 0.45], [0.3, 0.6], [0.28, 0.5], [0.3, 0.55]])
    assert claims.learns(learned).verdict == "reproduced"
    flat = seeds([[0.3, 0.31], [0.3, 0.29], [0.3, 0.32], [0.3, 0.28], [0.3, 0.3]])
    assert claims.learns(flat).verdict == "inconclusive"


def test_ddpo_queries_ratio_and_its_lower_bound_when_ddpo_never_gains():
    # DRaFT-1 gains half its final gain (0.2) after 40 queries (its step-5 evaluation).
    learning = seeds([[0.2, 0.4, 0.42, 0.45, 0.5, 0.6, 0.7]] * 5, queries_per_eval=1000)
    judged = claims.fewer_queries_than_ddpo(ONE, learning)
    # DDPO's mean curve reaches 0.2 + 0.201 at ~1005 queries: ~25x DRaFT-1's ~40.
    assert judged.verdict == "reproduced", judged.evidence
    assert 20 < judged.interval[0] < 30
    # DDPO never gains: its budget counts, and the ratio is a lower bound.
    stuck = seeds([[0.2, 0.21, 0.19, 0.2]] * 5, queries_per_eval=1024)
    judged = claims.fewer_queries_than_ddpo(ONE, stuck)
    # DRaFT-1's mean curve (0.2, 0.412, 0.602 at 0, 40, 80 queries) gains 0.201 at 37.9.
    assert "a lower bound" in judged.evidence
    assert judged.interval[0] == pytest.approx(3072 / (40 * 0.201 / 0.212), rel=1e-6)
    assert judged.verdict == "reproduced"
    # A small budget that DDPO spends without gaining is no evidence of an order of magnitude.
    short = seeds([[0.2, 0.2, 0.21]] * 5, queries_per_eval=100)
    assert claims.fewer_queries_than_ddpo(ONE, short).verdict == "not reproduced"


def test_diversity_loss_and_remedies_against_stopping_early():
    lv = [run([0.2, 0.5, 0.9], diversity=[0.6, 0.5 + 0.01 * i, 0.3 + 0.01 * i]) for i in range(5)]
    assert claims.diversity_lost(lv).verdict == "reproduced"
    # The path at reward 0.7 (between 0.5 and 0.9) has diversity 0.4 + 0.01 i.
    assert claims.diversity_when_reaching(claims.diversity_path(lv[0]), 0.7) == pytest.approx(0.4)
    keeps = [(0.7, 0.55 + 0.01 * i) for i in range(5)]
    judged = claims.keeps_more_than_early_stopping(lv, keeps, "DRaFT+")
    assert judged.verdict == "reproduced" and judged.interval[0] == pytest.approx(0.15)
    worse = [(0.7, 0.35 + 0.01 * i) for i in range(5)]
    assert claims.keeps_more_than_early_stopping(lv, worse, "x").verdict == "not reproduced"
    # A remedy that never reaches any of the path's rewards is set against the end of the path.
    assert claims.diversity_when_reaching([(0.2, 0.6), (0.5, 0.4)], 0.95) == 0.4


def test_hacking_is_flagged_when_the_reward_rises_and_the_judge_does_not():
    def sampled(r: dict, base: list[bool], final: list[bool]) -> dict:
        return r | {
            "samples": {"base": {"judge_verdicts": base}, "final": {"judge_verdicts": final}}
        }

    honest = [sampled(run([0.2, 0.6 + 0.01 * i]), [False, True], [True, True]) for i in range(5)]
    check = claims.hacking(honest)
    assert not check["flagged"] and check["shown_base"] == 0.5 and check["shown_final"] == 1.0
    hacked = [
        sampled(
            run([0.2, 0.6 + 0.01 * i], judge=[0.3, 0.3 - 0.02 * (i - 2)]), [False] * 2, [False] * 2
        )
        for i in range(5)
    ]
    assert claims.hacking(hacked)["flagged"]


def test_prompt_lost_flags_a_loss_of_more_than_one_attribute_in_ten():
    base = [0.9, 0.92, 0.94, 0.9, 0.91]
    collapsed = [0.5 + 0.02 * i for i in range(5)]
    assert claims.prompt_lost(base, collapsed)["flagged"]
    slight = [b - 0.05 + 0.01 * i for i, b in enumerate(base)]  # a small, certain loss
    check = claims.prompt_lost(base, slight)
    assert check["change"][2] < 0 and not check["flagged"]
    noisy = [b - 0.2 + 0.15 * (-1) ** i for i, b in enumerate(base)]  # large but uncertain
    assert not claims.prompt_lost(base, noisy)["flagged"]
