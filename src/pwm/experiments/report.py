"""A/B report: parity, reward curves, time to thresholds, stability, aggregate statistics, verdict.

Input: the run directories written by :mod:`pwm.experiments.ab` (``summary.json``, ``metrics.csv``,
``pretrain/metrics.csv``). Output in ``out_dir``: ``report.md``, ``report.json`` (tables and verdicts),
``runs.csv`` (one row per run) and PNG plots.

A *comparison* is one flow variant against the baseline of the same model size within a setting
(e.g. ``flow-K4-uniform`` vs ``baseline`` under ``default``), over every task both were run on, with
runs paired by seed (unpaired runs are listed, not compared). A run's reward is the mean of its
last ``final_evals`` evaluations. Its verdict checks the design spec's acceptance criteria (section
15), "under equal compute" read as equal wall-clock (pretraining included):

1. ``runs_complete``: every run of both variants finished its iterations with a final evaluation.
2. ``reward_on_half_of_tasks``: at equal wall-clock (each pair compared at the shorter of its two
   runs' durations), flow is better or tied on at least half of the tasks and better on at least one;
   per task a paired-seed confidence interval decides flow / baseline / tie / inconclusive
   (:func:`~pwm.experiments.statistics.paired_outcome`). The same comparison at equal iterations is
   reported beside it.
3. ``faster_convergence_on_subset``: on at least one task flow reaches the upper threshold (held for
   ``hold_evals`` consecutive evaluations) in less wall-clock time than the baseline, or reaches it
   where the baseline never does. Thresholds are fixed per task for the whole report: fractions of
   TD-MPC2's published reward where one exists, else of the task's observed reward range.
4. ``stability_or_esnr``: flow has a lower coefficient of variation of the actor grad norm, or a
   higher mean ESNR, or fewer skipped (non-finite) updates than the baseline.

The verdict is ``invalid`` (reasons named) when a variant did not learn a task (its reward does not
beat the random policy's by ``learned_std_margin`` random-episode standard deviations and
``learned_min_gain`` of the random reward's magnitude) or a world model did not converge; else
``reject`` when a criterion fails, ``inconclusive`` when one cannot be decided at this number of
seeds, and ``accept`` when all hold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pwm.experiments.published import tdmpc2_final  # noqa: E402
from pwm.experiments.statistics import (  # noqa: E402
    REWARD, Criteria, coefficient_of_variation, final_reward, paired_outcome, reward_at_wall, reward_criterion,
    time_to_threshold)
from pwm.utils.common import atomic_write_text  # noqa: E402


@dataclass
class Run:
    """One finished (or partial) A/B run."""

    path: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame
    pretrain: pd.DataFrame | None

    @property
    def evals(self) -> pd.DataFrame:
        """Evaluation rows with the total wall-clock (pretraining + policy training) ``wall_s``."""
        rows = self.metrics[self.metrics[REWARD].notna()] if REWARD in self.metrics else self.metrics.iloc[:0]
        rows = rows.copy()
        rows["wall_s"] = rows["time/train_elapsed_s"] + float(self.summary.get("pretrain_elapsed_s", 0.0))
        return rows


def select_runs(runs: list[Run], task: str, setting: str, variants: tuple[str, ...] | None = None) -> list[Run]:
    """The runs of one task and setting (and, if given, of these variants)."""
    return [r for r in runs if r.summary["task"] == task and r.summary.get("setting", "default") == setting
            and (variants is None or r.summary["variant"] in variants)]


def load_runs(root: str | Path) -> list[Run]:
    """Every run under ``root`` that has a ``summary.json`` and a ``metrics.csv``."""
    runs = []
    for summary_path in sorted(Path(root).rglob("summary.json")):
        metrics_path = summary_path.parent / "metrics.csv"
        if not metrics_path.exists():
            continue
        pretrain_path = summary_path.parent / "pretrain" / "metrics.csv"
        runs.append(Run(summary_path.parent, json.loads(summary_path.read_text()), pd.read_csv(metrics_path),
                        pd.read_csv(pretrain_path) if pretrain_path.exists() else None))
    return runs


def _column_stat(frame: pd.DataFrame | None, column: str, how: str) -> float:
    if frame is None or column not in frame:
        return float("nan")
    values = frame[column].dropna()
    if values.empty:
        return float("nan")
    return float(getattr(values, how)())


HELDOUT_COLUMNS = {"heldout_latent_nmse_1": "wm_eval/latent_nmse_1", "heldout_latent_nmse_H": "wm_eval/latent_nmse_H",
                   "heldout_reward_corr": "wm_eval/reward_corr_rollout",
                   "heldout_reward_nmse": "wm_eval/reward_nmse_rollout"}


def _best_heldout(pretrain: pd.DataFrame | None) -> dict[str, float]:
    """Held-out diagnostics of the pretraining evaluation with the lowest ``heldout_error`` (the
    weights pretraining kept)."""
    if pretrain is None or "wm_eval/heldout_error" not in pretrain or pretrain["wm_eval/heldout_error"].isna().all():
        return {name: math.nan for name in HELDOUT_COLUMNS}
    best = pretrain.loc[pretrain["wm_eval/heldout_error"].idxmin()]
    return {name: float(best.get(column, math.nan)) for name, column in HELDOUT_COLUMNS.items()}


def model_size(summary: dict[str, Any]) -> str:
    """A run's network sizes, e.g. ``latent64-wm128x128-actor128x128`` (only runs of one size are compared)."""
    alg = summary.get("alg") or {}
    wm, actor = alg.get("world_model_config") or {}, alg.get("actor_config") or {}
    if not wm:
        return "unknown"
    units = "x".join(str(u) for u in wm.get("units", []))
    return f"latent{wm.get('latent_dim')}-wm{units}-actor{'x'.join(str(u) for u in actor.get('units', []))}"


def run_table(runs: list[Run], final_evals: int = 1) -> pd.DataFrame:
    """One row per run: identity, outcome (``final_reward``: mean of the last ``final_evals``
    evaluations; ``last_reward``: the last one), cost and stability statistics."""
    rows = []
    for run in runs:
        s, m = run.summary, run.metrics
        nan_counts = s.get("nan_skipped_steps", {})
        rows.append({
            "task": s["task"], "setting": s.get("setting", "default"), "variant": s["variant"],
            "model": model_size(s),
            "is_flow": bool(s.get("is_flow", s["variant"] != "baseline")), "seed": int(s["seed"]),
            "iterations": int(s.get("iterations", 0)),
            "expected_iterations": int(s.get("expected_iterations", s.get("iterations", 0))),
            "stopped_by_budget": bool(s.get("stopped_by_budget", False)),
            "final_reward": final_reward(run.evals, final_evals),
            "last_reward": float(s.get("final_reward", math.nan)),
            "final_success": float(s.get("final_success", math.nan)),
            "best_reward": float(s.get("best_reward", math.nan)),
            "pretrain_s": float(s.get("pretrain_elapsed_s", 0.0)),
            "policy_s": float(s.get("train_elapsed_s", math.nan)),
            "wall_s": float(s.get("pretrain_elapsed_s", 0.0)) + float(s.get("train_elapsed_s", math.nan)),
            "params_world_model": s.get("params/world_model", math.nan),
            "params_actor": s.get("params/actor", math.nan),
            "params_critic": s.get("params/critic", math.nan),
            "nan_skipped": float(sum(nan_counts.values())) if nan_counts else 0.0,
            "actor_grad_norm_var": _column_stat(m, "actor/grad_norm", "var"),
            "actor_grad_norm_cv": coefficient_of_variation(m["actor/grad_norm"]) if "actor/grad_norm" in m else math.nan,
            "critic_grad_norm_var": _column_stat(m, "critic/grad_norm", "var"),
            "esnr_mean": _column_stat(m, "actor/esnr", "mean"),
            "latent_norm_max": _column_stat(m, "rollout/latent_norm_max", "max"),
            "latent_norm_mean": _column_stat(m, "rollout/latent_norm_mean", "mean"),
            "nonfinite_latents": _column_stat(m, "rollout/nonfinite_latents", "sum"),
            "wm_update_s": _column_stat(run.pretrain, "time/wm_update_s", "mean"),
            "actor_update_s": _column_stat(m, "time/actor_update_s", "mean"),
            "random_reward": float(s.get("random_reward", math.nan)),
            "random_reward_std": float(s.get("random_reward_std", math.nan)),
            "pretrain_iterations": float(s.get("pretrain_iterations", math.nan)),
            "pretrain_converged": s.get("pretrain_converged"),
            **_best_heldout(run.pretrain),
            "dynamics_loss_final": _column_stat(run.pretrain.tail(1) if run.pretrain is not None else None,
                                                "wm/dynamics_loss", "mean"),
            "reward_loss_final": _column_stat(run.pretrain.tail(1) if run.pretrain is not None else None,
                                              "wm/reward_loss", "mean"),
        })
    return pd.DataFrame(rows)


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


def learned_margin(random_reward: float, random_std: float, std_margin: float, min_gain: float) -> float:
    """How far above the random policy's mean reward a policy must score to count as having learned."""
    return max(std_margin * random_std, min_gain * abs(random_reward))


def invalid_reasons(per_task: pd.DataFrame, runs: pd.DataFrame, flow_variant: str) -> list[str]:
    """Why a comparison cannot be judged: variants that did not learn, world models that did not converge.

    Args:
        per_task: one row per task with ``random_reward``, ``learned_margin`` and, per variant key
            (``baseline``/``flow``), ``<key>_reward``.
        runs: the comparison's rows of :func:`run_table` (``variant``, ``pretrain_converged``).
    """
    reasons = []
    for _, row in per_task.iterrows():
        if not np.isfinite(row["random_reward"]):
            reasons.append(f"{row['task']}: no random-policy reference reward to check learning against")
            continue
        bar = row["random_reward"] + row["learned_margin"]
        for key, variant in (("baseline", "baseline"), ("flow", flow_variant)):
            if not row[f"{key}_reward"] >= bar:
                reasons.append(f"{row['task']}: {variant} did not learn (final reward {row[f'{key}_reward']:.1f} "
                               f"< random {row['random_reward']:.1f} + margin {row['learned_margin']:.1f})")
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


# ---------------------------------------------------------------------- plotting
def _curve(ax, runs: list[Run], x: str, label: str, color: str) -> None:
    frames = [r.evals[[x, REWARD]].reset_index(drop=True) for r in runs]
    frames = [f for f in frames if len(f)]
    if not frames:
        return
    length = min(len(f) for f in frames)
    xs = np.mean([f[x].to_numpy()[:length] for f in frames], axis=0)
    ys = np.array([f[REWARD].to_numpy()[:length] for f in frames])
    ax.plot(xs, ys.mean(0), color=color, label=f"{label} (n={len(frames)})", marker="o", markersize=3)
    if len(frames) > 1:
        ax.fill_between(xs, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), color=color, alpha=0.2)


def plot_curves(groups: dict[str, list[Run]], title: str, path: Path, thresholds: dict[str, float]) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, runs) in enumerate(groups.items()):
        _curve(axes[0], runs, "iteration", label, colors[i % len(colors)])
        _curve(axes[1], runs, "wall_s", label, colors[i % len(colors)])
    for ax, xlabel in zip(axes, ("policy iteration", "wall-clock s (incl. WM pretraining)")):
        for name, value in thresholds.items():
            ax.axhline(value, color="grey", linestyle=":", linewidth=1)
            ax.annotate(name, (ax.get_xlim()[0], value), fontsize=7, color="grey", va="bottom")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval episode reward (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


DIAGNOSTICS = [("pretrain", "wm/dynamics_loss", "WM dynamics loss (own objective, pretraining)", "log"),
               ("pretrain", "wm/reward_loss", "WM reward loss (pretraining)", "log"),
               ("pretrain", "wm_eval/latent_nmse_1", "held-out 1-step latent error (normalised)", "log"),
               ("pretrain", "wm_eval/latent_nmse_H", "held-out H-step latent error (normalised)", "log"),
               ("pretrain", "wm_eval/reward_corr_rollout", "held-out reward correlation along rollouts", "linear"),
               ("policy", "wm_eval/reward_mse_H_rollout", "reward error along rollouts on eval episodes", "log"),
               ("policy", "actor/grad_norm", "actor grad norm", "log"),
               ("policy", "actor/esnr", "actor ESNR proxy", "log"),
               ("policy", "rollout/latent_norm_max", "max latent norm along rollouts", "linear")]


def plot_diagnostics(groups: dict[str, list[Run]], title: str, path: Path) -> Path:
    """Training losses beside the like-for-like yardstick (held-out prediction errors), and the
    policy-phase stability signals; one line per run."""
    fig, axes = plt.subplots(3, 3, figsize=(14, 10))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (phase, column, name, scale) in zip(axes.flat, DIAGNOSTICS):
        drawn = False
        for i, (label, runs) in enumerate(groups.items()):
            for j, run in enumerate(runs):
                frame = run.pretrain if phase == "pretrain" else run.metrics
                if frame is None or column not in frame:
                    continue
                data = frame[["iteration", column]].dropna()
                ax.plot(data["iteration"], data[column], color=colors[i % len(colors)], alpha=0.6, linewidth=1,
                        label=label if j == 0 else None)
                drawn = drawn or (len(data) > 0 and bool((data[column] > 0).any()))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"{phase} iteration", fontsize=8)
        ax.grid(alpha=0.3)
        if scale == "log" and drawn:
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_aggregate(aggregates: dict[str, dict[str, Any]], path: Path) -> Path:
    names = list(aggregates)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.8 * len(names)))
    for row, name in enumerate(names):
        for offset, (variant, color) in enumerate((("baseline", "tab:blue"), ("flow", "tab:orange"))):
            est = aggregates[name]["iqm"][variant]
            y = row + 0.18 * (offset * 2 - 1)
            ax.errorbar(est["iqm"], y, xerr=[[est["iqm"] - est["ci_low"]], [est["ci_high"] - est["iqm"]]],
                        fmt="o", color=color, capsize=4, label=variant if row == 0 else None)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("IQM of normalised final reward (95% stratified-bootstrap CI)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- report
def _fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "never"
    if value != 0 and abs(value) < 10.0**-digits:
        return f"{value:.3g}"  # small diagnostics (e.g. grad-norm variances) keep their magnitude
    return f"{value:,.{digits}f}"


def _slug(*parts: str) -> str:
    return "_".join(p.replace("/", "-").replace("=", "-").replace(",", "-") for p in parts)


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
            learned_std_margin: float = 2.0, learned_min_gain: float = 0.1) -> dict[str, Any]:
    """All statistics of one comparison (``flow_variant`` vs baseline within ``setting`` at one model
    size); ``thresholds`` maps each task to :func:`task_thresholds`."""
    sub = table[(table.setting == setting) & (table.model == model) & table.variant.isin(["baseline", flow_variant])]
    tasks = sorted(set(sub[sub.variant == "baseline"].task) & set(sub[sub.variant == flow_variant].task))
    per_task, scores, unpaired_runs = [], {"baseline": [], "flow": []}, []
    for task in tasks:
        group = [r for r in select_runs(runs, task, setting, ("baseline", flow_variant)) if model_size(r.summary) == model]
        pairs, unpaired = _pairs(group, flow_variant)
        unpaired_runs += [f"{task}: {u}" for u in unpaired]
        targets, scale, source = thresholds[task]
        high_name = list(targets)[-1]
        task_rows = sub[sub.task == task]
        entry: dict[str, Any] = {"task": task, "seeds": [int(b.summary["seed"]) for b, _ in pairs],
                                 "targets": targets, "threshold_source": source, "scale": scale}
        entry["random_reward"] = float(task_rows.random_reward.mean())
        entry["learned_margin"] = learned_margin(entry["random_reward"], float(task_rows.random_reward_std.mean()),
                                                 learned_std_margin, learned_min_gain)
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
            scores[key].append((iters - (entry["random_reward"] if np.isfinite(entry["random_reward"]) else 0.0))
                               / (scale or 1.0))
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
    seeds = min((len(s) for s in scores["baseline"]), default=0)
    if tasks and seeds:
        matrices = {k: np.stack([s[:seeds] for s in v], axis=1) for k, v in scores.items()}  # [runs, tasks]
        result["iqm"] = iqm_with_ci(matrices, reps)
        result["probability_of_improvement"] = probability_of_improvement(matrices["flow"], matrices["baseline"], reps)
        result["seeds_used"] = seeds
        result.update(decide(per_task_df, stability, complete, invalid_reasons(per_task_df, sub, flow_variant)))
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


def build_report(root: str | Path, out_dir: str | Path | None = None, thresholds: tuple[float, ...] = (0.5, 0.8),
                 bootstrap_reps: int = 2000, learned_std_margin: float = 2.0, learned_min_gain: float = 0.1,
                 criteria: Criteria | None = None, reference_dir: str | Path | None = None) -> dict[str, Any]:
    """Build the A/B report for every run under ``root``; returns the ``report.json`` content.

    ``thresholds`` are fractions of each task's published TD-MPC2 reward (``reference_dir``, default
    the repository's ``benchmarks/reference``), or of its observed reward range where none is published.
    """
    criteria = criteria or Criteria()
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(root / "runs" if (root / "runs").is_dir() else root)
    if not runs:
        raise FileNotFoundError(f"no A/B runs (summary.json + metrics.csv) under {root}")
    table = run_table(runs, criteria.final_evals)
    atomic_write_text(table.to_csv(index=False), out_dir / "runs.csv")
    reference = tdmpc2_final(reference_dir) if reference_dir is not None else tdmpc2_final()
    task_targets = {task: task_thresholds(runs, task, list(thresholds), reference) for task in sorted(table.task.unique())}
    comparisons = []
    for (setting, model), group in table.groupby(["setting", "model"]):
        for flow_variant in sorted(group[group.is_flow].variant.unique()):
            comparisons.append(compare(runs, table, setting, model, flow_variant, task_targets, criteria,
                                       bootstrap_reps, learned_std_margin, learned_min_gain))
    parity_table = parity(table)
    figures = []
    for (task, setting), _ in table.groupby(["task", "setting"]):
        groups: dict[str, list[Run]] = {}
        for run in select_runs(runs, task, setting):
            groups.setdefault(run.summary["variant"], []).append(run)
        groups = dict(sorted(groups.items(), key=lambda kv: (kv[0] != "baseline", kv[0])))
        title = f"{task} [{setting}]"
        figures.append(plot_curves(groups, title, out_dir / f"curves_{_slug(task, setting)}.png", task_targets[task][0]))
        figures.append(plot_diagnostics(groups, title, out_dir / f"diagnostics_{_slug(task, setting)}.png"))
    aggregates = {f"{c['setting']}: {c['flow_variant']}": c for c in comparisons if "iqm" in c}
    if aggregates:
        figures.append(plot_aggregate(aggregates, out_dir / "aggregate_iqm.png"))
    report = {"root": str(root), "runs": len(runs), "comparisons": comparisons,
              "parity": parity_table.to_dict(orient="records"), "thresholds": list(thresholds),
              "criteria": vars(criteria), "figures": [f.name for f in figures]}
    atomic_write_text(json.dumps(report, indent=2, default=float), out_dir / "report.json")
    atomic_write_text(render_markdown(report, parity_table, table), out_dir / "report.md")
    return report


def _diff(d: dict[str, float]) -> str:
    if d["pairs"] >= 2:
        return f"{_fmt(d['mean_diff'], 1)} [{_fmt(d['ci_low'], 1)}, {_fmt(d['ci_high'], 1)}]"
    return f"{_fmt(d['mean_diff'], 1)} (1 seed)"


def render_markdown(report: dict[str, Any], parity_table: pd.DataFrame, table: pd.DataFrame) -> str:
    crit = report["criteria"]
    lines = ["# A/B report: flow-matching vs MLP latent dynamics", "",
             f"{report['runs']} runs under `{report['root']}`. Rewards are deterministic-policy evaluation episode "
             f"returns; a run's reward is the mean of its last {crit['final_evals']} evaluations. Runs are paired "
             "by seed. **Equal wall-clock** (the primary comparison, spec section 15's equal compute): each pair "
             "is compared at the shorter of its two runs' durations, world-model pretraining included; "
             "**equal iterations**: at the end of both runs. Per task, a paired-seed "
             f"{int(100 * crit['confidence'])}% t interval of flow - baseline decides: flow or baseline when it "
             f"excludes 0 and the difference exceeds {100 * crit['tie_tolerance']:g}% of the task's reward scale, "
             "tie when it lies within that tolerance, else inconclusive. Thresholds are fixed per task "
             "(fractions of TD-MPC2's published reward where one exists) and count once held for "
             f"{crit['hold_evals']} consecutive evaluations.", "", "## Verdicts", ""]
    for c in report["comparisons"]:
        lines.append(f"### {c['flow_variant']} vs baseline [{c['setting']}, {c['model']}]: **{c['verdict'].upper()}**")
        lines.append("")
        for reason in c.get("invalid_reasons", []):
            lines.append(f"- INVALID: {reason}")
        for note in c.get("runs_below_random_bar", []):
            lines.append(f"- note, single run: {note}")
        if c.get("unpaired_runs"):
            lines.append(f"- not compared (no run of the other variant with the same seed): "
                         f"{', '.join(c['unpaired_runs'])}")
        for name, criterion in c.get("criteria", {}).items():
            lines.append(f"- {criterion['status'].upper()} `{name}`: {criterion['detail']}")
        if c.get("seeds_used", 0) and c["seeds_used"] < 3:
            lines.append(f"- note: {c['seeds_used']} seed(s) per task; confidence intervals are wide, "
                         "treat this verdict as preliminary")
        lines.append("")
    lines += ["## Parity", "", "| setting | variant | runs | WM params | vs baseline | actor params | critic params "
              "| WM update ms | vs baseline | actor update ms | pretrain s | policy s | total s | vs baseline |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in parity_table.iterrows():
        lines.append(f"| {r.setting} | {r.variant} | {r.runs} | {int(r.params_world_model):,} | "
                     f"{_fmt(r.params_world_model_vs_baseline, 4)} | {int(r.params_actor):,} | {int(r.params_critic):,} | "
                     f"{_fmt(r.wm_update_ms)} | {_fmt(r.wm_update_ms_vs_baseline)} | {_fmt(r.actor_update_ms)} | "
                     f"{_fmt(r.pretrain_s, 1)} | {_fmt(r.policy_s, 1)} | {_fmt(r.wall_s, 1)} | {_fmt(r.wall_s_vs_baseline)} |")
    for c in report["comparisons"]:
        if not c["tasks"] or "iqm" not in c:
            continue
        names = [f"{int(q * 100)}%" for q in report["thresholds"]]
        lines += ["", f"## Results: {c['flow_variant']} vs baseline [{c['setting']}, {c['model']}]", "",
                  "| task | random policy | equal wall-clock: budget s | baseline | flow | flow - baseline | outcome "
                  "| equal iterations: baseline | flow | flow - baseline | outcome | learned (b / f) "
                  "| WM pretraining iterations (b / f) | WM pretraining s (b / f) | thresholds | "
                  + " | ".join(f"time to {n} (b / f), s" for n in names) + " |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(names)]
        for t in c["per_task"]:
            times = " | ".join(f"{_fmt(t[f'baseline_time_to_{n}'], 1)} / {_fmt(t[f'flow_time_to_{n}'], 1)}" for n in names)
            learned = " / ".join("yes" if t[f"{k}_learned"] else "**no**" for k in ("baseline", "flow"))
            targets = ", ".join(f"{n} = {_fmt(v, 1)}" for n, v in t["targets"].items())
            lines.append(f"| {t['task']} | {_fmt(t['random_reward'])} (+{_fmt(t['learned_margin'])} to count) "
                         f"| {_fmt(t['wall_budget_s'], 1)} | {_fmt(t['baseline_reward_wall'])} | {_fmt(t['flow_reward_wall'])} "
                         f"| {_diff(t['diff_wall'])} | **{t['outcome_wall']}** "
                         f"| {_fmt(t['baseline_reward'])} ± {_fmt(t['baseline_reward_std'])} "
                         f"| {_fmt(t['flow_reward'])} ± {_fmt(t['flow_reward_std'])} | {_diff(t['diff_iterations'])} "
                         f"| {t['outcome_iterations']} | {learned} "
                         f"| {_fmt(t['baseline_pretrain_iterations'], 0)} / {_fmt(t['flow_pretrain_iterations'], 0)} "
                         f"| {_fmt(t['baseline_pretrain_s'], 1)} / {_fmt(t['flow_pretrain_s'], 1)} "
                         f"| {targets} ({t['threshold_source']}) | {times} |")
        iqm, poi = c["iqm"], c["probability_of_improvement"]
        lines += ["", "Aggregate over tasks at equal iterations (reward above the random policy's, as a fraction of "
                  f"each task's reward scale; {c['seeds_used']} seed(s) per task; 95% stratified-bootstrap CIs, rliable):", "",
                  f"- IQM baseline: {_fmt(iqm['baseline']['iqm'], 3)} [{_fmt(iqm['baseline']['ci_low'], 3)}, "
                  f"{_fmt(iqm['baseline']['ci_high'], 3)}]",
                  f"- IQM flow: {_fmt(iqm['flow']['iqm'], 3)} [{_fmt(iqm['flow']['ci_low'], 3)}, {_fmt(iqm['flow']['ci_high'], 3)}]",
                  f"- P(flow > baseline): {_fmt(poi['p'], 3)} [{_fmt(poi['ci_low'], 3)}, {_fmt(poi['ci_high'], 3)}]",
                  "", "Stability (mean over runs; the grad-norm coefficient of variation is scale-free, the variance "
                  "is shown for reference):", "",
                  "| variant | actor grad-norm CV | actor grad-norm var | critic grad-norm var | ESNR "
                  "| skipped non-finite updates | max latent norm | mean latent norm | non-finite latents |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key in ("baseline", "flow"):
            s = c["stability"][key]
            lines.append(f"| {key} | {_fmt(s['actor_grad_norm_cv'], 3)} | {_fmt(s['actor_grad_norm_var'], 6)} "
                         f"| {_fmt(s['critic_grad_norm_var'], 4)} | "
                         f"{_fmt(s['esnr_mean'], 4)} | {_fmt(s['nan_skipped'], 0)} | {_fmt(s['latent_norm_max'], 3)} | "
                         f"{_fmt(s['latent_norm_mean'], 3)} | {_fmt(s['nonfinite_latents'], 0)} |")
    lines += ["", "## World-model quality (held-out windows, the pretraining evaluation that was kept)", "",
              "Both dynamics are scored on one yardstick: open-loop latent rollouts under the data's actions "
              "against the encoder's latents of the observed states (errors normalised by the targets' spread: "
              "1 = no better than the batch mean), and rewards predicted along them. Mean over runs.", "",
              "| setting | variant | runs | converged | 1-step latent error | H-step latent error "
              "| reward correlation | reward error (normalised) |", "|---|---|---|---|---|---|---|---|"]
    for (setting, variant), group in table.groupby(["setting", "variant"]):
        converged = sum(f is True for f in group.pretrain_converged)
        lines.append(f"| {setting} | {variant} | {len(group)} | {converged}/{len(group)} "
                     f"| {_fmt(group.heldout_latent_nmse_1.mean(), 4)} | {_fmt(group.heldout_latent_nmse_H.mean(), 4)} "
                     f"| {_fmt(group.heldout_reward_corr.mean(), 3)} | {_fmt(group.heldout_reward_nmse.mean(), 4)} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in report["figures"]]
    return "\n".join(lines) + "\n"
