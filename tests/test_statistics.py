"""The verdict's statistics against hand computations."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pwm.experiments.statistics import (
    Criteria, coefficient_of_variation, final_reward, paired_outcome, reward_at_wall, reward_criterion,
    time_to_threshold, variance_components)


def evals(rewards, walls=None):
    walls = walls if walls is not None else [10.0 * (i + 1) for i in range(len(rewards))]
    return pd.DataFrame({"iteration": [10 * (i + 1) - 1 for i in range(len(rewards))],
                         "eval/episode_reward": rewards, "wall_s": walls})


def test_final_reward_is_the_mean_of_the_last_k():
    assert final_reward(evals([0, 10, 20, 90]), 3) == pytest.approx(40.0)
    assert final_reward(evals([5.0]), 3) == 5.0  # fewer evaluations than k: all of them
    assert math.isnan(final_reward(evals([]), 3))


def test_reward_at_equal_wall_clock():
    frame = evals([10, 20, 30, 40], walls=[5, 15, 25, 35])
    assert reward_at_wall(frame, 25.0, 2, no_policy_reward=-1) == pytest.approx(25.0)  # evaluations at 15 and 25
    assert reward_at_wall(frame, 4.0, 2, no_policy_reward=-1) == -1  # no policy yet: the random policy's reward


def test_a_spike_does_not_reach_a_threshold():
    frame = evals([10, 60, 20, 60, 70])
    assert time_to_threshold(frame, 50, hold=1) == (19.0, 20.0)
    assert time_to_threshold(frame, 50, hold=2) == (39.0, 40.0)
    assert time_to_threshold(frame, 50, hold=3) == (math.inf, math.inf)


def test_paired_outcome_interval_hand_computation():
    criteria = Criteria(tie_tolerance=0.02, confidence=0.95)
    flow, baseline = np.array([12.0, 15.0, 11.0]), np.array([10.0, 10.0, 10.0])  # diffs 2, 5, 1
    result = paired_outcome(flow, baseline, scale=100.0, criteria=criteria)
    half = stats.t.ppf(0.975, 2) * np.std([2, 5, 1], ddof=1) / math.sqrt(3)
    assert result["mean_diff"] == pytest.approx(8 / 3)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((8 / 3 - half, 8 / 3 + half))
    assert result["outcome"] == "inconclusive"  # half = 5.2: the interval contains 0
    assert paired_outcome(flow + 10, baseline, 100.0, criteria)["outcome"] == "flow"
    assert paired_outcome(baseline, flow + 10, 100.0, criteria)["outcome"] == "baseline"
    # within +-2% of the scale (2 reward points) everywhere: a tie
    assert paired_outcome(np.array([10.1, 10.2, 10.0]), baseline, 100.0, criteria)["outcome"] == "tie"
    # the swapped roles give the mirrored interval
    swapped = paired_outcome(baseline, flow, 100.0, criteria)
    assert (swapped["ci_low"], swapped["ci_high"]) == pytest.approx((-result["ci_high"], -result["ci_low"]))


def test_one_pair_is_decided_by_the_tolerance_alone():
    criteria = Criteria(tie_tolerance=0.1)
    assert paired_outcome(np.array([5.0]), np.array([0.0]), 100.0, criteria)["outcome"] == "tie"
    assert paired_outcome(np.array([0.0]), np.array([0.0]), 0.0, criteria)["outcome"] == "tie"  # all-zero rewards
    assert paired_outcome(np.array([15.0]), np.array([0.0]), 100.0, criteria)["outcome"] == "flow"
    with pytest.raises(ValueError, match="paired rewards"):
        paired_outcome(np.array([1.0, 2.0]), np.array([1.0]), 1.0, criteria)


def test_reward_criterion_three_ways():
    assert reward_criterion(["flow", "baseline"])[0] == "pass"
    assert reward_criterion(["tie", "tie"])[0] == "fail"  # ties are not wins
    assert reward_criterion(["baseline", "baseline", "inconclusive"])[0] == "fail"
    assert reward_criterion(["baseline", "inconclusive"])[0] == "inconclusive"


def test_grad_norm_instability_is_scale_free():
    small, large = np.array([1e-4, 3e-4, 2e-4]), np.array([1.0, 3.0, 2.0])
    assert coefficient_of_variation(small) == pytest.approx(coefficient_of_variation(large))
    assert coefficient_of_variation(large) == pytest.approx(1.0 / 2.0)
    assert np.var(small) < np.var(large)  # what the old raw-variance rule compared


def test_variance_components_by_hand():
    """Three world models with 2, 3 and 1 policies: policy variance pooled over (1 + 2 + 0) degrees of freedom,
    the run means' variance less the policy variance's share mean(1/n_k) of it."""
    spread = variance_components([np.array([1.0, 3.0]), np.array([5.0, 9.0, 7.0]), np.array([4.0])])
    policy_var = (2.0 + 8.0) / 3                       # (1-2)^2 + (3-2)^2, (5-7)^2 + (9-7)^2 + 0
    run_mean_var = np.var([2.0, 7.0, 4.0], ddof=1)     # 19 / 3
    world_model_var = run_mean_var - policy_var * (1 / 2 + 1 / 3 + 1) / 3  # 116 / 27
    assert spread["policy_std"] == pytest.approx(math.sqrt(policy_var))
    assert spread["run_mean_std"] == pytest.approx(math.sqrt(19 / 3))
    assert spread["world_model_std"] == pytest.approx(math.sqrt(116 / 27)) == math.sqrt(world_model_var)
    assert spread["policy_share"] == pytest.approx(policy_var / (policy_var + 116 / 27))
    # policies spread wide around equal means: all of it is the policy seed's (the estimate clips at 0)
    same_means = variance_components([np.array([0.0, 1000.0]), np.array([1000.0, 0.0])])
    assert same_means["world_model_std"] == 0.0 and same_means["policy_share"] == 1.0
    # one policy per run cannot tell the two apart; one run cannot give a spread over runs
    assert math.isnan(variance_components([np.array([1.0]), np.array([5.0])])["policy_std"])
    assert math.isnan(variance_components([np.array([1.0, 3.0])])["run_mean_std"])


def test_criteria_name_bad_values():
    with pytest.raises(ValueError, match="report.final_evals"):
        Criteria(final_evals=0)
    with pytest.raises(ValueError, match="report.tie_tolerance"):
        Criteria(tie_tolerance=1.5)
