"""Statistics behind an A/B verdict: robust final rewards, rewards at equal wall-clock, thresholds
held for consecutive evaluations, paired-seed outcomes with confidence intervals.

Every function takes plain arrays or evaluation tables (columns ``eval/episode_reward``, ``iteration``
and ``wall_s``: seconds since the run started, world-model pretraining included), so each rule can be
checked against a hand computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

REWARD = "eval/episode_reward"
OUTCOMES = ("flow", "baseline", "tie", "inconclusive")


@dataclass(frozen=True)
class Criteria:
    """How rewards are summarised and compared (the ``report`` keys of ``scripts/cfg/ab.yaml``)."""

    final_evals: int = 3         # final reward = mean of the last k evaluations
    hold_evals: int = 2          # a threshold counts as reached once held for k consecutive evaluations
    tie_tolerance: float = 0.02  # |difference| within this fraction of the task's reward scale is a tie
    confidence: float = 0.95     # two-sided level of the paired-difference confidence intervals

    def __post_init__(self) -> None:
        if self.final_evals < 1 or self.hold_evals < 1:
            raise ValueError(f"report.final_evals and report.hold_evals must be >= 1, got "
                             f"{self.final_evals} and {self.hold_evals}")
        if not 0.0 <= self.tie_tolerance < 1.0:
            raise ValueError(f"report.tie_tolerance must be in [0, 1), got {self.tie_tolerance}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"report.confidence must be in [0.5, 1), got {self.confidence}")


def final_reward(evals: pd.DataFrame, k: int) -> float:
    """Mean reward of the last ``k`` evaluations (NaN if there are none): one lucky or unlucky last
    evaluation does not decide a run."""
    rewards = evals[REWARD].dropna().to_numpy()
    return float(rewards[-k:].mean()) if len(rewards) else math.nan


def reward_at_wall(evals: pd.DataFrame, seconds: float, k: int, no_policy_reward: float) -> float:
    """Mean reward of the last ``k`` evaluations made within ``seconds`` of wall-clock (pretraining
    included). A run with no evaluation by then has no policy yet and scores ``no_policy_reward``
    (the random policy's reward)."""
    within = evals[evals.wall_s <= seconds + 1e-9]
    return final_reward(within, k) if len(within) else float(no_policy_reward)


def time_to_threshold(evals: pd.DataFrame, target: float, hold: int) -> tuple[float, float]:
    """(iteration, wall seconds) of the first evaluation from which the reward stays >= ``target``
    for ``hold`` consecutive evaluations; (inf, inf) if that never happens. A single spike does not
    count (unless ``hold`` is 1)."""
    rewards = evals[REWARD].to_numpy()
    above = rewards >= target
    for start in range(len(rewards) - hold + 1):
        if above[start:start + hold].all():
            row = evals.iloc[start]
            return float(row["iteration"]), float(row["wall_s"])
    return math.inf, math.inf


def paired_outcome(flow: np.ndarray, baseline: np.ndarray, scale: float, criteria: Criteria) -> dict[str, float | str]:
    """Who is better on one task, from rewards paired by seed (``flow[i]`` and ``baseline[i]`` share a seed).

    With ``n >= 2`` pairs: a t confidence interval of the mean paired difference; ``flow`` or
    ``baseline`` when the interval excludes 0 and the mean difference exceeds the tie tolerance
    (``tie_tolerance * scale``), ``tie`` when the whole interval lies within the tolerance, else
    ``inconclusive``. With one pair there is no interval: the tolerance alone decides.
    """
    flow, baseline = np.asarray(flow, dtype=float), np.asarray(baseline, dtype=float)
    if flow.shape != baseline.shape or flow.ndim != 1:
        raise ValueError(f"paired rewards must be two vectors of one length, got {flow.shape} and {baseline.shape}")
    diff = flow - baseline
    n, tolerance = len(diff), criteria.tie_tolerance * abs(scale)
    if n == 0:
        return {"outcome": "inconclusive", "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "pairs": 0}
    mean = float(diff.mean())
    if n == 1:
        low = high = mean
        outcome = "tie" if abs(mean) <= tolerance else ("flow" if mean > 0 else "baseline")
    else:
        from scipy import stats

        half = float(stats.t.ppf(0.5 + criteria.confidence / 2, n - 1) * diff.std(ddof=1) / math.sqrt(n))
        low, high = mean - half, mean + half
        if low > 0 and mean > tolerance:
            outcome = "flow"
        elif high < 0 and mean < -tolerance:
            outcome = "baseline"
        elif -tolerance <= low and high <= tolerance:
            outcome = "tie"
        else:
            outcome = "inconclusive"
    return {"outcome": outcome, "mean_diff": mean, "ci_low": low, "ci_high": high, "pairs": n}


def reward_criterion(outcomes: list[str]) -> tuple[str, str]:
    """Spec section 15, "flow >= baseline reward on at least half of the tested tasks", as
    ``(status, detail)`` with status ``pass``/``fail``/``inconclusive``: flow is better or tied on at
    least half of the tasks and better on at least one (a comparison of ties alone is not a pass);
    fail when that cannot happen even if every inconclusive task went flow's way."""
    tasks = len(outcomes)
    counts = {name: outcomes.count(name) for name in OUTCOMES}
    detail = (f"flow better on {counts['flow']}, tied on {counts['tie']}, worse on {counts['baseline']}, "
              f"inconclusive on {counts['inconclusive']} of {tasks} tasks")
    if tasks == 0:
        return "fail", detail
    if counts["flow"] + counts["tie"] >= tasks / 2 and counts["flow"] >= 1:
        return "pass", detail
    if counts["flow"] + counts["tie"] + counts["inconclusive"] < tasks / 2 or (
            counts["flow"] + counts["inconclusive"] == 0):
        return "fail", detail
    return "inconclusive", detail


def coefficient_of_variation(values: pd.Series | np.ndarray) -> float:
    """std / mean of a positive series (NaN if empty or zero-mean): a scale-free instability measure,
    unlike a raw variance, which always favours the model with the smaller gradients."""
    values = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(values) < 2 or values.mean() == 0:
        return math.nan
    return float(values.std(ddof=1) / values.mean())


def variance_components(policy_rewards: list[np.ndarray]) -> dict[str, float]:
    """Split the spread of final rewards between world models and the policies extracted from each.

    Args:
        policy_rewards: one array per world model (run), the final rewards of its policies ``[n_k]``.

    Returns (a one-way random-effects model, method of moments; NaN where the data cannot tell):
        ``policy_std``: the pooled std of one world model's policies around their mean (the policy seed's
        share), ``sqrt(sum_k (n_k - 1) s_k^2 / sum_k (n_k - 1))``; needs a run with 2 or more policies.
        ``run_mean_std``: the observed std over runs of each run's mean over its policies (what a variant's
        seed-level confidence interval sees); needs 2 or more runs.
        ``world_model_std``: the std of the world models' expected rewards, the policy noise taken out,
        ``sqrt(max(run_mean_std^2 - policy_std^2 * mean_k(1 / n_k), 0))``.
        ``policy_share``: ``policy_std^2 / (policy_std^2 + world_model_std^2)``, the part of one policy's
        variance that comes from its policy seed rather than its world model.
    """
    arrays = [np.asarray(rewards, dtype=float) for rewards in policy_rewards if len(rewards)]
    dof = sum(len(a) - 1 for a in arrays)
    policy_var = sum(((a - a.mean()) ** 2).sum() for a in arrays) / dof if dof else math.nan
    means = np.array([a.mean() for a in arrays])
    run_mean_var = float(means.var(ddof=1)) if len(means) >= 2 else math.nan
    world_model_var = max(run_mean_var - policy_var * float(np.mean([1.0 / len(a) for a in arrays])), 0.0)
    total = policy_var + world_model_var
    return {"policy_std": math.sqrt(policy_var), "run_mean_std": math.sqrt(run_mean_var),
            "world_model_std": math.sqrt(world_model_var),
            "policy_share": float(policy_var / total) if total > 0 else math.nan}
