"""Statistics and verdict of one comparison (flow variant vs baseline): thresholds, aggregate
confidence intervals, the learned/converged checks and the acceptance criteria (see
:mod:`pwm.experiments.report` for the rules in words, :mod:`pwm.experiments.statistics` for the formulas)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pwm.algorithms.pwm import SATURATED_ACTION
from pwm.experiments.runs import UNRECORDED, Run, data_label, model_size, pretraining_setting, select_runs
from pwm.experiments.statistics import (
    REWARD, Criteria, final_reward, paired_outcome, reward_at_wall, reward_criterion, time_to_threshold)


def task_thresholds(runs: list[Run], task: str, fractions: list[float],
                    reference: dict[str, tuple[int, float]]) -> tuple[dict[str, float], float, str]:
    """Fixed reward thresholds of one task for the whole report, its reward scale, and their source.

    Fractions of TD-MPC2's published reward for the task where it exists (so every comparison and
    every report uses the same bar), else of the reward range observed over all runs of the task.
    """
    names = [f"{int(q * 100)}%" for q in fractions]
    if task in reference:
        step, published = reference[task]
        return ({n: q * published for n, q in zip(names, fractions)}, published,
                f"TD-MPC2 published {published:.1f} @ {step / 1e6:g}M steps")
    values = pd.concat([r.evals[REWARD] for r in runs if r.summary["task"] == task])
    low, high = (float(values.min()), float(values.max())) if len(values) else (math.nan, math.nan)
    return ({n: low + q * (high - low) for n, q in zip(names, fractions)}, (high - low) or 1.0,
            f"observed range [{low:.1f}, {high:.1f}]")


def iqm_with_ci(scores: dict[str, np.ndarray], reps: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """IQM of ``[runs, tasks]`` score matrices with 95% stratified-bootstrap CIs (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)  # rliable's bootstrap draws from NumPy's global RNG
    point, interval = rly.get_interval_estimates(scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    return {k: {"iqm": float(point[k][0]), "ci_low": float(interval[k][0][0]), "ci_high": float(interval[k][1][0])}
            for k in scores}


def probability_of_improvement(flow: np.ndarray, baseline: np.ndarray, reps: int, seed: int = 0) -> dict[str, float]:
    """P(flow > baseline) on ``[runs, tasks]`` scores, with a 95% stratified-bootstrap CI (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)
    point, interval = rly.get_interval_estimates(
        {"flow>baseline": (flow, baseline)},
        lambda x, y: np.array([metrics.probability_of_improvement(x, y)]), reps=reps)
    return {"p": float(point["flow>baseline"][0]), "ci_low": float(interval["flow>baseline"][0][0]),
            "ci_high": float(interval["flow>baseline"][1][0])}


@dataclass(frozen=True)
class LearnedBar:
    """When a variant counts as having learned a task (``report.learned_*`` of ``scripts/cfg/ab.yaml``,
    whose values these defaults equal; a test keeps them equal).

    A policy has learned when its final reward beats the random policy's mean reward by
    :meth:`margin`: the largest of ``std_margin`` random-episode standard deviations, ``min_gain`` of the
    random reward's magnitude and ``min_scale`` of the task's reward scale (the last keeps the bar clear
    where a random policy scores about 0 with a tiny spread, as on finger-spin: 0.4 +- 1.2).
    """

    std_margin: float = 2.0
    min_gain: float = 0.1
    min_scale: float = 0.05

    def __post_init__(self) -> None:
        for name in ("std_margin", "min_gain", "min_scale"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"report.learned_{name} must be a finite number >= 0, got {value}")

    def margin(self, random_reward: float, random_std: float, scale: float) -> float:
        """How far above ``random_reward`` a policy must score on a task of reward ``scale``."""
        scale_gain = self.min_scale * scale if np.isfinite(scale) else 0.0
        return max(self.std_margin * random_std, self.min_gain * abs(random_reward), scale_gain)


#: When world models count as converged (``report.convergence``; see :class:`ConvergenceRule`).
CONVERGENCE_RULES = ("plateau", "half_budget")


@dataclass(frozen=True)
class ConvergenceRule:
    """When a comparison's world models count as converged (``report.convergence`` and
    ``report.half_budget_tolerance`` of ``scripts/cfg/ab.yaml``, whose values these defaults equal).

    ``plateau``: every run's flag from pretraining's plateau rule. ``half_budget``: per task and variant,
    on the runs that also pretrained for half the cap (``pretrain.half_budget_seeds``), the held-out
    error where pretraining ended is within ``tolerance`` (relative) of the one at half the cap. More than
    that below: the last doubling of the budget still bought much, so the model is short of converged.
    More than that above: the cap overtrains, and half of it gives the better model (a small dataset
    overfitted; cup-catch's baseline at 40k on the study's portable data: +74%, and its policy fell back to
    199 where the 20k model's reached 949). Under a decaying learning rate the plateau flag cannot tell
    (the error falls until the rate is gone).

    ``budget_dirs``: folders of archived runs at other caps (``report.budget_dirs``; read by
    :func:`pwm.experiments.budget.budget_points`). A checked run whose error fell by more than ``tolerance``
    still counts as converged when a run of its task, variant, seed and data at twice its cap is there (of its
    setting, or of one that pretrains the same world models: :func:`~pwm.experiments.runs.pretraining_setting`)
    and that run's error is not more than ``tolerance`` below its own: the next doubling was tried and bought
    no more (a halved cap, whose optimum lies between it and the overtrained double).
    """

    rule: str = "plateau"
    tolerance: float = 0.1
    budget_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rule not in CONVERGENCE_RULES:
            raise ValueError(f"report.convergence must be one of {CONVERGENCE_RULES}, got {self.rule!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"report.half_budget_tolerance must be in [0, 1), got {self.tolerance}")


def random_bar(task_rows: pd.DataFrame, bar: LearnedBar, scale: float) -> tuple[float, float]:
    """A task's random-policy reward and :meth:`LearnedBar.margin` from its runs' rows (``random_reward``,
    ``random_reward_std``) and reward ``scale``: a policy learned when it scores at least their sum."""
    random_reward = float(task_rows.random_reward.mean())
    return random_reward, bar.margin(random_reward, float(task_rows.random_reward_std.mean()), scale)


def _not_learned_detail(runs: pd.DataFrame, task: str, variant: str) -> str:
    """What a variant's runs on a task logged that tells why it did not learn, each part as ``; ...``:
    the imagined against the real reward per step (a policy exploiting its model, or one that never
    found the reward) and the share of saturated actions (a policy stuck at its tanh bounds gets no
    gradient and no exploration). Empty when nothing was logged."""
    group = runs[(runs.task == task) & (runs.variant == variant)]
    parts = []
    if "imagined_reward_per_step" in group:
        imagined, real = group.imagined_reward_per_step.mean(), group.real_reward_per_step.mean()
        if np.isfinite(imagined) and np.isfinite(real):
            parts.append(f"imagined reward {imagined:.3g}/step vs real {real:.3g}/step")
    if "closed_loop_gap_final" in group and np.isfinite(gap := group.closed_loop_gap_final.mean()):
        parts.append(f"on its evaluation states the model imagines {gap:+.3g} reward/step more than the policy earns")
    if "saturated_fraction" in group and np.isfinite(saturated := group.saturated_fraction.mean()):
        parts.append(f"policy saturated (|a| > {SATURATED_ACTION}) in {saturated:.0%} of action dimensions")
    return "".join(f"; {part}" for part in parts)


def invalid_reasons(per_task: pd.DataFrame, runs: pd.DataFrame, flow_variant: str,
                    convergence: ConvergenceRule | None = None) -> list[str]:
    """Why a comparison cannot be judged: runs on different data or CPUs (:func:`like_for_like_reasons`),
    variants that did not learn, world models that did not converge (by ``convergence``, default
    :class:`ConvergenceRule` ()).

    Args:
        per_task: one row per task with ``random_reward``, ``learned_margin`` and, per variant key
            (``baseline``/``flow``), ``<key>_reward``.
        runs: the comparison's rows of :func:`run_table` (``task``, ``variant``, ``seed``,
            ``pretrain_converged``, ``heldout_error_final``, ``half_budget_heldout_error_final``,
            ``half_budget_drop`` and, when logged, ``imagined_reward_per_step`` / ``real_reward_per_step``
            and ``saturated_fraction``, quoted beside a variant that did not learn).
    """
    convergence = convergence or ConvergenceRule()
    reasons = like_for_like_reasons(list(per_task["task"]), runs)
    for _, row in per_task.iterrows():
        if not np.isfinite(row["random_reward"]):
            reasons.append(f"{row['task']}: no random-policy reference reward to check learning against")
            continue
        bar = row["random_reward"] + row["learned_margin"]
        for key, variant in (("baseline", "baseline"), ("flow", flow_variant)):
            if not row[f"{key}_reward"] >= bar:
                reasons.append(f"{row['task']}: {variant} did not learn (final reward {row[f'{key}_reward']:.1f} "
                               f"< random {row['random_reward']:.1f} + margin {row['learned_margin']:.1f})"
                               + _not_learned_detail(runs, row["task"], variant))
    if convergence.rule == "half_budget":
        return reasons + half_budget_reasons(list(per_task["task"]), runs, flow_variant, convergence.tolerance,
                                             _budgets_tried(convergence.budget_dirs))
    for variant in ("baseline", flow_variant):
        flags = runs[runs.variant == variant].pretrain_converged.tolist()
        unchecked = sum(f is None or (isinstance(f, float) and math.isnan(f)) for f in flags)
        not_converged = sum(f is False for f in flags)
        if not_converged:
            reasons.append(f"{variant}: world model did not converge in {not_converged} of {len(flags)} runs "
                           "(held-out error still falling at pretrain.iterations)")
        if unchecked:
            reasons.append(f"{variant}: world-model convergence unchecked in {unchecked} of {len(flags)} runs "
                           "(no held-out episodes)")
    return reasons


def like_for_like_reasons(tasks: list[str], runs: pd.DataFrame) -> list[str]:
    """A reason for each task whose runs read different datasets (``data_sha256``) or ran on different CPUs
    (``cpu``): a paired comparison needs the same data, and equal wall-clock the same machine. Runs from
    before these were recorded (None in every run of a task) are not judged; None beside a recorded value
    is a difference (``runs``: rows of :func:`run_table`)."""
    reasons = []
    for task in tasks:
        rows = runs[runs.task == task]
        for column, what, why in (("data_sha256", "datasets", "a pair must read the same data"),
                                  ("cpu", "CPUs", "wall-clock is not comparable across machines")):
            if column not in rows:
                continue
            values = rows[column].map(lambda value: value if isinstance(value, str) else UNRECORDED)
            if values.nunique() > 1:
                groups = "; ".join(
                    f"{value[:12] if column == 'data_sha256' else value}: "
                    + ", ".join(f"{row.variant} seed {row.seed}" for row in rows[values == value].itertuples())
                    for value in sorted(values.unique()))
                reasons.append(f"{task}: runs on {values.nunique()} different {what} ({why}): {groups}")
    return reasons


def _budgets_tried(folders: tuple[str, ...]) -> pd.DataFrame | None:
    """Every budget the runs under ``folders`` pretrained for (:func:`pwm.experiments.budget.budget_points`;
    a folder not made yet holds none), or None without folders."""
    from pwm.experiments.budget import budget_points  # it plots; the verdict alone needs no matplotlib

    frames = [budget_points(folder) for folder in folders if Path(folder).is_dir()]
    return pd.concat(frames, ignore_index=True) if frames else None


def _doubled_error(budgets: pd.DataFrame | None, row: Any) -> float | None:
    """The held-out error of a run like ``row`` (same task, variant, seed, data and pretraining setting,
    :func:`~pwm.experiments.runs.pretraining_setting`) at twice its cap, if ``budgets`` holds one."""
    if budgets is None or budgets.empty or not np.isfinite(row.pretrain_iterations):
        return None
    same_pretraining = budgets.setting.map(pretraining_setting) == pretraining_setting(row.setting)
    same = budgets[(budgets.task == row.task) & same_pretraining & (budgets.variant == row.variant)
                   & (budgets.seed == row.seed) & (budgets.data == data_label(row.data_sha256))
                   & (budgets.pretrain_iterations == 2 * int(row.pretrain_iterations))]
    return float(same.heldout_error.mean()) if not same.empty else None


CONVERGED, NOT_CONVERGED, OVERTRAINED, CONVERGED_BY_DOUBLE = (
    "converged", "not converged", "overtrained", "converged by its 2x run")


def half_budget_judgement(row: Any, tolerance: float, budgets: pd.DataFrame | None = None) -> str | None:
    """:class:`ConvergenceRule` ``half_budget`` on one run (a row of :func:`run_table`): None when it was not
    checked (no ``half_budget_drop``); :data:`OVERTRAINED` when its held-out error rose by more than
    ``tolerance`` from half the cap to the cap; :data:`CONVERGED` within it; on a larger fall
    :data:`CONVERGED_BY_DOUBLE` when ``budgets`` (:func:`_budgets_tried`) holds the same run at twice the cap
    and that doubling bought at most ``tolerance``, else :data:`NOT_CONVERGED`."""
    drop = row.half_budget_drop
    if drop is None or not np.isfinite(drop):
        return None
    if drop < -tolerance:
        return OVERTRAINED
    if drop <= tolerance:
        return CONVERGED
    doubled = _doubled_error(budgets, row)
    if doubled is not None and (row.heldout_error_final - doubled) / row.heldout_error_final <= tolerance:
        return CONVERGED_BY_DOUBLE
    return NOT_CONVERGED


def convergence_judgements(table: pd.DataFrame, convergence: ConvergenceRule) -> list[str | None]:
    """Each run's convergence by ``convergence`` (rows of :func:`run_table`): by the half-budget rule
    :func:`half_budget_judgement`; by the plateau rule :data:`CONVERGED` or :data:`NOT_CONVERGED` from its
    flag. None: not checked (a run not of ``pretrain.half_budget_seeds``, or no held-out episodes)."""
    if convergence.rule == "half_budget":
        budgets = _budgets_tried(convergence.budget_dirs)
        return [half_budget_judgement(row, convergence.tolerance, budgets) for row in table.itertuples()]
    return [(CONVERGED if flag else NOT_CONVERGED) if isinstance(flag, (bool, np.bool_)) else None
            for flag in table.pretrain_converged]


def half_budget_reasons(tasks: list[str], runs: pd.DataFrame, flow_variant: str, tolerance: float,
                        budgets: pd.DataFrame | None = None) -> list[str]:
    """A reason for each task and variant whose checked run :func:`half_budget_judgement` finds not converged
    or overtrained, and for each one without a checked run (``runs``: rows of :func:`run_table`)."""
    reasons = []
    for task in tasks:
        for variant in ("baseline", flow_variant):
            rows = runs[(runs.task == task) & (runs.variant == variant)]
            checked = rows[rows.half_budget_drop.notna()]
            if checked.empty:
                reasons.append(f"{task}: {variant}'s world-model convergence unchecked (no run of "
                               "pretrain.half_budget_seeds pretrained for half the cap)")
            for row in checked.itertuples():
                judgement = half_budget_judgement(row, tolerance, budgets)
                errors = (f"seed {row.seed}: held-out error {row.half_budget_heldout_error_final:.4g} at half the "
                          f"cap, {row.heldout_error_final:.4g} at the cap")
                if judgement == NOT_CONVERGED:
                    doubled = _doubled_error(budgets, row)
                    again = ("" if doubled is None else f"; at twice the cap {doubled:.4g}, "
                             f"{(row.heldout_error_final - doubled) / row.heldout_error_final:.0%} lower again")
                    reasons.append(f"{task}: {variant}'s world model did not converge ({errors}, "
                                   f"{row.half_budget_drop:.0%} lower; more than {tolerance:.0%}{again})")
                elif judgement == OVERTRAINED:
                    reasons.append(f"{task}: {variant}'s world model overtrained ({errors}, "
                                   f"{-row.half_budget_drop:.0%} higher; more than {tolerance:.0%}): half the cap "
                                   "gives the better model")
    return reasons


def decide(per_task: pd.DataFrame, stability: dict[str, dict[str, float]], complete: bool,
           reasons_invalid: list[str] | None = None) -> dict[str, Any]:
    """Verdict on the acceptance criteria (see the module docstring).

    Args:
        per_task: one row per task with ``outcome_wall`` (the paired outcome at equal wall-clock),
            ``baseline_time_to_high`` and ``flow_time_to_high`` (wall seconds to the upper threshold,
            held; inf if never reached).
        stability: ``{"baseline": {...}, "flow": {...}}`` with ``actor_grad_norm_cv``, ``esnr_mean``
            and ``nan_skipped`` averaged over runs.
        complete: whether every run finished.
        reasons_invalid: why the comparison cannot be judged (see :func:`invalid_reasons`); any
            reason makes the verdict ``invalid``, and the criteria are still reported.
    """
    tasks = len(per_task)
    reward_status, reward_detail = reward_criterion(list(per_task["outcome_wall"]) if tasks else [])
    faster = per_task[np.isfinite(per_task["flow_time_to_high"])
                      & (per_task["flow_time_to_high"] < per_task["baseline_time_to_high"])] if tasks else per_task
    base, flow = stability["baseline"], stability["flow"]
    stable_reasons = []
    if flow["actor_grad_norm_cv"] < base["actor_grad_norm_cv"]:
        stable_reasons.append("lower actor grad-norm coefficient of variation")
    if flow["esnr_mean"] > base["esnr_mean"]:
        stable_reasons.append("higher ESNR")
    if flow["nan_skipped"] < base["nan_skipped"]:
        stable_reasons.append("fewer skipped non-finite updates")
    criteria = {
        "runs_complete": {"status": "pass" if complete else "fail",
                          "detail": "all runs finished" if complete else "unfinished runs"},
        "reward_on_half_of_tasks": {"status": reward_status, "detail": f"at equal wall-clock: {reward_detail}"},
        "faster_convergence_on_subset": {"status": "pass" if len(faster) else "fail",
                                         "detail": f"faster to the upper threshold on {len(faster)}/{tasks} tasks"
                                         + (f" ({', '.join(faster['task'])})" if len(faster) else "")},
        "stability_or_esnr": {"status": "pass" if stable_reasons else "fail",
                              "detail": ", ".join(stable_reasons) if stable_reasons
                              else "no lower grad-norm variation, higher ESNR or fewer skipped updates"},
    }
    for criterion in criteria.values():
        criterion["passed"] = criterion["status"] == "pass"
    failed = [name for name, c in criteria.items() if c["status"] == "fail"]
    undecided = [name for name, c in criteria.items() if c["status"] == "inconclusive"]
    reasons_invalid = list(reasons_invalid or [])
    if reasons_invalid:
        verdict = "invalid"
    else:
        verdict = "reject" if failed else ("inconclusive" if undecided else "accept")
    return {"verdict": verdict, "failed": failed, "inconclusive": undecided, "criteria": criteria,
            "invalid_reasons": reasons_invalid}


def _pairs(group: list[Run], flow_variant: str) -> tuple[list[tuple[Run, Run]], list[str]]:
    """(baseline run, flow run) pairs that share a seed, and a description of the unpaired runs."""
    by_seed: dict[str, dict[int, Run]] = {"baseline": {}, flow_variant: {}}
    for run in group:
        by_seed[run.summary["variant"]][int(run.summary["seed"])] = run
    shared = sorted(set(by_seed["baseline"]) & set(by_seed[flow_variant]))
    unpaired = [f"{variant} seed {seed}" for variant, runs in by_seed.items() for seed in sorted(runs)
                if seed not in shared]
    return [(by_seed["baseline"][s], by_seed[flow_variant][s]) for s in shared], unpaired


def _duration(run: Run) -> float:
    evals = run.evals
    return float(evals.wall_s.iloc[-1]) if len(evals) else math.nan


def compare(runs: list[Run], table: pd.DataFrame, setting: str, model: str, flow_variant: str,
            thresholds: dict[str, tuple[dict[str, float], float, str]], criteria: Criteria, reps: int,
            learned_bar: LearnedBar | None = None, convergence: ConvergenceRule | None = None) -> dict[str, Any]:
    """All statistics of one comparison (``flow_variant`` vs baseline within ``setting`` at one model
    size); ``thresholds`` maps each task to :func:`task_thresholds` (whose reward scale also sets the
    ``learned_bar``'s scale part, :meth:`LearnedBar.margin`; default :class:`LearnedBar` ());
    ``convergence`` judges the world models (default :class:`ConvergenceRule` ())."""
    learned_bar = learned_bar or LearnedBar()
    sub = table[(table.setting == setting) & (table.model == model) & table.variant.isin(["baseline", flow_variant])]
    tasks = sorted(set(sub[sub.variant == "baseline"].task) & set(sub[sub.variant == flow_variant].task))
    per_task, unpaired_runs = [], []
    scores: dict[str, dict[str, list[np.ndarray]]] = {"iterations": {"baseline": [], "flow": []},
                                                      "wall": {"baseline": [], "flow": []}}
    for task in tasks:
        group = [r for r in select_runs(runs, task, setting, ("baseline", flow_variant)) if model_size(r.summary) == model]
        pairs, unpaired = _pairs(group, flow_variant)
        unpaired_runs += [f"{task}: {u}" for u in unpaired]
        targets, scale, source = thresholds[task]
        high_name = list(targets)[-1]
        task_rows = sub[sub.task == task]
        entry: dict[str, Any] = {"task": task, "seeds": [int(b.summary["seed"]) for b, _ in pairs],
                                 "targets": targets, "threshold_source": source, "scale": scale}
        entry["random_reward"], entry["learned_margin"] = random_bar(task_rows, learned_bar, scale)
        budgets = [min(_duration(b), _duration(f)) for b, f in pairs]
        entry["wall_budget_s"] = float(np.mean(budgets)) if budgets else math.nan
        no_policy = entry["random_reward"] if np.isfinite(entry["random_reward"]) else 0.0
        paired = {}
        for key, index in (("baseline", 0), ("flow", 1)):
            chosen = [pair[index] for pair in pairs]
            rows = task_rows[task_rows.variant == (flow_variant if key == "flow" else "baseline")]
            rows = rows[rows.seed.isin(entry["seeds"])]
            iters = np.array([final_reward(r.evals, criteria.final_evals) for r in chosen])
            walls = np.array([reward_at_wall(r.evals, t, criteria.final_evals, no_policy)
                              for r, t in zip(chosen, budgets)])
            paired[key] = (iters, walls)
            entry[f"{key}_reward"] = float(iters.mean()) if len(iters) else math.nan
            entry[f"{key}_reward_std"] = float(iters.std(ddof=0)) if len(iters) else math.nan
            entry[f"{key}_reward_wall"] = float(walls.mean()) if len(walls) else math.nan
            entry[f"{key}_success"] = float(rows.final_success.mean())
            entry[f"{key}_seeds"] = len(chosen)
            entry[f"{key}_wall_s"] = float(rows.wall_s.mean())
            entry[f"{key}_pretrain_iterations"] = float(rows.pretrain_iterations.mean())
            entry[f"{key}_pretrain_s"] = float(rows.pretrain_s.mean())
            entry[f"{key}_learned"] = bool(entry[f"{key}_reward"] >= entry["random_reward"] + entry["learned_margin"])
            for name, target in targets.items():
                times = [time_to_threshold(r.evals, target, criteria.hold_evals)[1] for r in chosen]
                entry[f"{key}_time_to_{name}"] = float(np.mean(times)) if times else math.inf
            for label, values in (("iterations", iters), ("wall", walls)):
                scores[label][key].append((values - no_policy) / (scale or 1.0))
        entry["baseline_time_to_high"] = entry[f"baseline_time_to_{high_name}"]
        entry["flow_time_to_high"] = entry[f"flow_time_to_{high_name}"]
        for label, index in (("iterations", 0), ("wall", 1)):
            result = paired_outcome(paired["flow"][index], paired["baseline"][index], scale, criteria)
            entry[f"outcome_{label}"] = result["outcome"]
            entry[f"diff_{label}"] = {k: v for k, v in result.items() if k != "outcome"}
        per_task.append(entry)
    per_task_df = pd.DataFrame(per_task)
    bars = {t["task"]: t["random_reward"] + t["learned_margin"] for t in per_task}
    runs_below = [f"{row.task}: {row.variant} seed {row.seed} did not learn (final reward {row.final_reward:.1f} "
                  f"< {bars[row.task]:.1f})" for row in sub[sub.task.isin(tasks)].itertuples()
                  if not row.final_reward >= bars[row.task]]
    stability = {
        key: {col: float(sub[sub.variant == variant][col].mean())
              for col in ("actor_grad_norm_cv", "actor_grad_norm_var", "critic_grad_norm_var", "esnr_mean",
                          "nan_skipped", "latent_norm_max", "latent_norm_mean", "nonfinite_latents")}
        for variant, key in (("baseline", "baseline"), (flow_variant, "flow"))
    }
    complete = bool(len(sub)) and bool(((sub.iterations >= sub.expected_iterations) | sub.stopped_by_budget).all()) \
        and bool(sub.final_reward.notna().all())
    result: dict[str, Any] = {"setting": setting, "model": model, "flow_variant": flow_variant, "tasks": tasks,
                              "per_task": per_task, "stability": stability, "runs_below_random_bar": runs_below,
                              "unpaired_runs": unpaired_runs, "criteria_config": vars(criteria)}
    seeds = min((len(s) for s in scores["iterations"]["baseline"]), default=0)
    if tasks and seeds:
        for label, suffix in (("iterations", ""), ("wall", "_wall")):
            matrices = {k: np.stack([s[:seeds] for s in v], axis=1) for k, v in scores[label].items()}  # [runs, tasks]
            result[f"iqm{suffix}"] = iqm_with_ci(matrices, reps)
            result[f"probability_of_improvement{suffix}"] = probability_of_improvement(
                matrices["flow"], matrices["baseline"], reps)
        result["seeds_used"] = seeds
        result.update(decide(per_task_df, stability, complete, invalid_reasons(per_task_df, sub, flow_variant, convergence)))
    else:
        result.update({"verdict": "no data", "failed": [], "inconclusive": [], "criteria": {}, "invalid_reasons": []})
    return result


def parity(table: pd.DataFrame) -> pd.DataFrame:
    """Parameter counts and wall-clock per (setting, variant), with ratios to the baseline."""
    agg = table.groupby(["setting", "variant"]).agg(
        runs=("seed", "count"), params_world_model=("params_world_model", "first"),
        params_actor=("params_actor", "first"), params_critic=("params_critic", "first"),
        wm_update_ms=("wm_update_s", lambda s: 1000 * s.mean()), actor_update_ms=("actor_update_s", lambda s: 1000 * s.mean()),
        pretrain_s=("pretrain_s", "mean"), policy_s=("policy_s", "mean"), wall_s=("wall_s", "mean"),
    ).reset_index()
    base = agg[agg.variant == "baseline"].set_index("setting")
    for column in ("params_world_model", "wm_update_ms", "wall_s"):
        agg[f"{column}_vs_baseline"] = [
            row[column] / base.loc[row.setting, column] if row.setting in base.index else math.nan
            for _, row in agg.iterrows()]
    return agg
