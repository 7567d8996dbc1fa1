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
    assert (
        verdict == "reproduced" and "after 1000 queries, DRaFT-1's mean curve after 80" in evidence
    )
    assert "(12.5x fewer" in evidence

    # If DRaFT-1 needs nearly as many queries, the claim fails.
    results["DDPO"] = [run([0.30, 0.35, 0.40], 50)]
    assert claims.fewer_queries_than_ddpo(results)[0] == "not reproduced"

    # If DRaFT-1 never gains as much, it fails too, and says so.
    results["DRaFT-1"] = [run([0.20, 0.22, 0.25], 40)]
    verdict, evidence = claims.fewer_queries_than_ddpo(results)
    assert verdict == "not reproduced" and "never gains as much" in evidence


def test_ddpo_long_run_sets_the_gain_and_a_gain_within_seed_noise_counts_as_none():
    # Three DDPO seeds end within +-0.01 of their base: sd 0.01, so noise is 0.02.
    flat = [run([0.30, r], 512) for r in (0.29, 0.30, 0.31)]
    one = [run([0.20, 0.21, 0.31, 0.45], 40)]
    # The long run gains 0.1, first after 3 x 1024 queries; DRaFT-1 gains 0.1 after 80.
    long_run = run([0.30, 0.32, 0.35, 0.40, 0.39, 0.40], 1024)
    verdict, evidence = claims.fewer_queries_than_ddpo({"DDPO": flat, "DRaFT-1": one}, long_run)
    assert verdict == "reproduced", evidence
    assert "gain +0.0000 over its base after 512" in evidence and "= 0.0200" in evidence
    assert "first gains +0.1000 after 3072 queries, DRaFT-1's mean curve after 80" in evidence
    assert "(38.4x fewer" in evidence

    # A long run that ends within the noise: the ratio is a lower bound, DDPO's budget over
    # DRaFT-1's first gain above the noise (0.10 at 80 queries; 0.01 at 40 is within it).
    stuck = run([0.30, 0.32, 0.29, 0.31], 1024)
    verdict, evidence = claims.fewer_queries_than_ddpo({"DDPO": flat, "DRaFT-1": one}, stuck)
    assert verdict == "reproduced"
    assert "never gains beyond the noise in 3072 queries" in evidence
    assert "does after 80 (at least 38.4x fewer" in evidence

    # Without a long run the seeds' mean curve is judged the same way: 512 / 80 queries.
    verdict, evidence = claims.fewer_queries_than_ddpo({"DDPO": flat, "DRaFT-1": one})
    assert verdict == "reproduced" and "never gains beyond the noise in 512 queries" in evidence
    assert "(at least 6.4x fewer" in evidence
    # A bound under 5x is no evidence of "far fewer": 100 / 80 queries.
    short = [run([0.30, r], 100) for r in (0.29, 0.30, 0.31)]
    verdict, evidence = claims.fewer_queries_than_ddpo({"DDPO": short, "DRaFT-1": one})
    assert verdict == "not reproduced" and "(at least 1.2x fewer" in evidence


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
