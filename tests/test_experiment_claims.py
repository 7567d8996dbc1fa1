"""The rules that turn an experiment run's numbers into the verdicts of docs/experiments.md,
checked on made-up numbers where the right verdict is known."""

from __future__ import annotations

from experiments import claims


def diversity_points(kl: dict, scaled: dict, plain=(0.9, 0.02)) -> dict:
    return {
        "base": {"base model": (0.2, 0.05)},
        "plain": {"DRaFT-LV": plain},
        "kl": kl,
        "scaled": scaled,
    }


def test_a_remedy_counts_only_if_it_keeps_diversity_and_half_the_reward_gain():
    # Half the gain of 0.2 -> 0.9 is a reward of at least 0.55.
    both = diversity_points({"kl 0.1": (0.8, 0.03)}, {"scale 0.5": (0.6, 0.04)})
    verdict, evidence = claims.diversity_kept(both)
    assert verdict == "reproduced"
    assert "kl 0.1, scale 0.5" in evidence and "reward >= 0.550" in evidence

    # The KL run keeps diversity only by not learning: it does not count.
    stalled = diversity_points({"kl 1": (0.21, 0.05)}, {"scale 0.5": (0.6, 0.04)})
    assert claims.diversity_kept(stalled)[0] == "partly reproduced"

    # Neither remedy is more diverse than the unregularised run.
    neither = diversity_points({"kl 0.1": (0.8, 0.01)}, {"scale 0.5": (0.5, 0.04)})
    assert claims.diversity_kept(neither)[0] == "not reproduced"


def test_no_diversity_lost_means_not_reproduced_whatever_the_remedies_do():
    points = diversity_points({"kl 0.1": (0.8, 0.07)}, {"scale 0.5": (0.6, 0.07)}, (0.9, 0.06))
    verdict, evidence = claims.diversity_kept(points)
    assert verdict == "not reproduced" and "loses diversity: no" in evidence


def run(rewards: list[float], queries_per_eval: int, seconds_per_step: float = 1.0) -> dict:
    val = [
        {"step": 10 * i, "queries": queries_per_eval * i, "reward": r, "diversity": 0.0}
        for i, r in enumerate(rewards)
    ]
    steps = val[-1]["step"]
    return {"val": val, "train": [{"step": steps, "seconds": seconds_per_step * steps}]}


def test_ddpo_comparison_counts_queries_to_match_ddpo_gain_over_its_own_base():
    # DDPO gains 0.1 in 1000 queries; DRaFT-1 first exceeds base + 0.1 at 80 queries.
    results = {
        "DDPO": [run([0.30, 0.35, 0.40], 500)],
        "DRaFT-1": [run([0.20, 0.25, 0.35, 0.50], 40)],
    }
    verdict, evidence = claims.fewer_queries_than_ddpo(results)
    assert verdict == "reproduced" and "after 80 (12.5x fewer" in evidence

    # If DRaFT-1 needs nearly as many queries, the claim fails.
    results["DDPO"] = [run([0.30, 0.35, 0.40], 50)]
    assert claims.fewer_queries_than_ddpo(results)[0] == "not reproduced"

    # If DRaFT-1 never gains as much, it fails too, and says so.
    results["DRaFT-1"] = [run([0.20, 0.22, 0.25], 40)]
    verdict, evidence = claims.fewer_queries_than_ddpo(results)
    assert verdict == "not reproduced" and "never gains as much" in evidence


def test_lv_claim_needs_both_fewer_steps_and_a_small_extra_cost():
    one = [run([0.2, 0.5, 0.7], 40)]
    assert (
        claims.lv_faster_than_one(
            {"DRaFT-1": one, "DRaFT-LV (n=2)": [run([0.2, 0.7, 0.8], 80, 1.2)]}
        )[0]
        == "reproduced"
    )
    assert (
        claims.lv_faster_than_one(
            {"DRaFT-1": one, "DRaFT-LV (n=2)": [run([0.2, 0.7, 0.8], 80, 3.0)]}
        )[0]
        == "partly reproduced"
    )
    assert (
        claims.lv_faster_than_one(
            {"DRaFT-1": one, "DRaFT-LV (n=2)": [run([0.2, 0.4, 0.6], 80, 3.0)]}
        )[0]
        == "not reproduced"
    )


def test_small_k_claim_checks_final_reward_and_monotone_gradient_norms():
    results = {
        "DRaFT-1": [run([0.2, 0.9], 40)],
        "DRaFT-K (K=5)": [run([0.2, 0.8], 40)],
        "full DRaFT": [run([0.2, 0.7], 40)],
    }
    growing = {"1": [0.1], "5": [0.5], "20": [2.0]}
    verdict, evidence = claims.small_k_beats_full(results, growing)
    assert (
        verdict == "reproduced" and "DRaFT-1 0.9000" in evidence and "20.0x, monotone" in evidence
    )
    results["full DRaFT"] = [run([0.2, 0.95], 40)]
    assert claims.small_k_beats_full(results, growing)[0] == "partly reproduced"
    shrinking = {"1": [2.0], "5": [0.5], "20": [0.1]}
    assert claims.small_k_beats_full(results, shrinking)[0] == "not reproduced"


def test_early_stopping_diversity_is_read_where_the_path_first_reaches_the_reward():
    path = [(0.2, 0.6), (0.5, 0.5), (0.9, 0.3), (0.7, 0.35)]  # in training order
    assert claims.early_stopping_diversity(path, 0.35) == 0.55
    assert abs(claims.early_stopping_diversity(path, 0.8) - 0.35) < 1e-12  # first in 0.5-0.9
    assert claims.early_stopping_diversity(path, 0.95) is None
    # A remedy is set against the path in the evidence; the verdict's rule is unchanged.
    points = {
        **diversity_points({"kl 0.01": (0.8, 0.45)}, {"scale 0.5": (0.5, 0.3)}),
        "early": {f"step {10 * i}": p for i, p in enumerate([(0.2, 0.05), (0.9, 0.01)])},
    }
    verdict, evidence = claims.diversity_kept(points)
    assert verdict == "partly reproduced"  # scale 0.5 keeps under half the reward gain
    assert "kl 0.01 0.4500 vs 0.0157 (more)" in evidence
