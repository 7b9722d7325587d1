"""World-model quality and reward against the pretraining budget, over every cap a study tried.

A study that doubles (or halves) a task's cap until the half-budget check passes (``report.convergence=half_budget``,
``pretrain.iterations_by_task``) leaves one run per cap (archived next to each other, e.g. ``runs/``,
``budget_40k/runs/``, ``budget_80k/runs/``), each with the held-out error of its own world model and of its
half-budget check. This puts them on one axis per task: the held-out error at every budget tried (where the
rule's verdict came from) and the final reward of the policy extracted at each cap (whether the extra
pretraining bought anything). A budget that two folders hold (a cap's run is the next cap's check) must
agree, or the folders mix two studies.

    python -m pwm.experiments.budget results/study_v2     # budget.csv and budget.png in that folder
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pwm.experiments.runs import (data_label, further_policy_logs, metrics_file, policy_index,  # noqa: E402
                                  policy_mean_evals)
from pwm.experiments.statistics import REWARD, final_reward  # noqa: E402
from pwm.utils.common import atomic_savefig, atomic_write_text  # noqa: E402

COLUMNS = ["task", "setting", "variant", "seed", "data", "pretrain_iterations", "heldout_error", "final_reward",
           "source"]


def budget_points(folder: str | Path, final_evals: int = 3) -> pd.DataFrame:
    """One row per (task, setting, variant, seed, dataset, pretraining iterations) under ``folder``: the held-out
    error (mean of the last held-out evaluations, as the rule compares) and, for a cap's run, the mean reward of
    its last ``final_evals`` evaluations (NaN for a half-budget check, which extracts no policy). ``data``: the
    first 12 hex digits of the run's dataset fingerprint, or ``unrecorded``; runs on other data are other
    world models, so their budgets are kept apart."""
    rows: dict[tuple, dict] = {}
    for summary_path in sorted(Path(folder).rglob("summary.json")):
        summary = json.loads(summary_path.read_text())
        if policy_index(summary_path.parent, summary) > 0:
            continue  # averaged into its run's reward below
        metrics = metrics_file(summary_path.parent / "metrics.csv")
        reward = math.nan  # a run whose policy has not finished
        if metrics is not None:
            reward = final_reward(policy_mean_evals(pd.read_csv(metrics), further_policy_logs(summary_path.parent)),
                                  final_evals)
        identity = (summary["task"], summary.get("setting", "default"), summary["variant"], int(summary["seed"]),
                    data_label(summary.get("data_sha256")))
        measured = [(summary.get("pretrain_half_iterations"), summary.get("pretrain_half_heldout_error_final"),
                     math.nan),
                    (summary.get("pretrain_iterations"), summary.get("pretrain_heldout_error_final"), reward)]
        for iterations, error, run_reward in measured:
            if iterations is None or error is None:
                continue
            key = (*identity, int(iterations))
            row = dict(zip(COLUMNS, (*key, float(error), run_reward, str(summary_path.parent))))
            if key in rows:
                _merge(rows[key], row)
            else:
                rows[key] = row
    return pd.DataFrame(list(rows.values()), columns=COLUMNS).sort_values(COLUMNS[:6], ignore_index=True)


def _merge(kept: dict, other: dict) -> None:
    """Two folders hold one budget (a cap's run and the next cap's check): the same world model, same error."""
    if not math.isclose(kept["heldout_error"], other["heldout_error"], rel_tol=1e-6):
        raise ValueError(f"{kept['source']} and {other['source']} disagree on the held-out error of "
                         f"{other['task']} {other['variant']} seed {other['seed']} (data {other['data']}) at "
                         f"{other['pretrain_iterations']} "
                         f"iterations ({kept['heldout_error']:.6g} vs {other['heldout_error']:.6g}): "
                         "the folders hold runs of different studies")
    if math.isnan(kept["final_reward"]):
        kept["final_reward"], kept["source"] = other["final_reward"], other["source"]


def plot_budget(points: pd.DataFrame, path: str | Path, setting: str = "default", tolerance: float = 0.1) -> Path:
    """Per task, held-out error (top) and final reward (bottom) against pretraining iterations, one line per
    variant through the mean over seeds (each seed a dot: their spread at one cap is the run-to-run variation
    the rule's tolerance competes with); each doubling's change of the error (:func:`doubling_changes`, over the
    seeds run at both budgets) is written next to it, bold red where it fell by more than ``tolerance`` (not
    converged by the rule), bold purple where it rose by more (overtrained). A task whose runs read more than
    one dataset gets one line per variant and dataset, labelled with the data's fingerprint."""
    points = points[points.setting == setting]
    tasks = sorted(points.task.unique())
    if not tasks:
        raise ValueError(f"no runs of setting {setting!r} to plot")
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks), 6.4), squeeze=False, sharex="col")
    budgets_tried = sorted(points.pretrain_iterations.unique())
    colors = {}
    for column, task in enumerate(tasks):
        task_points = points[points.task == task]
        several_datasets = task_points.data.nunique() > 1
        for (variant, data), rows in task_points.groupby(["variant", "data"]):
            label = f"{variant} [data {data}]" if several_datasets else variant
            color = colors.setdefault(label, f"C{len(colors)}")
            means = rows.groupby("pretrain_iterations")[["heldout_error", "final_reward"]].mean()
            budgets = means.index.to_numpy()
            axes[0, column].plot(budgets, means.heldout_error, marker="o", color=color, label=label)
            axes[0, column].scatter(rows.pretrain_iterations, rows.heldout_error, color=color, s=8, alpha=0.5)
            for (_, high), change in doubling_changes(rows).items():
                outside = abs(change) > tolerance
                axes[0, column].annotate(f"{100 * change:+.0f}%", (high, means.heldout_error[high]), fontsize=7,
                                         color=("red" if change < 0 else "purple") if outside else color,
                                         fontweight="bold" if outside else "normal",
                                         textcoords="offset points", xytext=(4, 4))
            rewarded = means.final_reward.dropna()
            axes[1, column].plot(rewarded.index, rewarded.to_numpy(), marker="o", color=color, label=label)
            seeds = rows.dropna(subset=["final_reward"])
            axes[1, column].scatter(seeds.pretrain_iterations, seeds.final_reward, color=color, s=8, alpha=0.5)
        axes[0, column].set_title(task)
        for row in (0, 1):
            axes[row, column].set_xscale("log", base=2)
            axes[row, column].set_xticks(budgets_tried, [_short(budget) for budget in budgets_tried])
            axes[row, column].minorticks_off()
            axes[row, column].set_xlim(budgets_tried[0] / 1.3, budgets_tried[-1] * 1.5)
        axes[1, column].set_xlabel("pretraining iterations")
        axes[0, column].set_yscale("log")
    axes[0, 0].set_ylabel("held-out error")
    axes[1, 0].set_ylabel(f"final reward ({REWARD})")
    for column in range(len(tasks)):  # a task's own legend: labels with a dataset are that task's
        axes[0, column].legend(fontsize=6)
    fig.suptitle("World-model quality and reward against the pretraining budget (on doubling, red: fell more than "
                 f"{100 * tolerance:.0f}%, not converged; purple: rose more than that, overtrained)", fontsize=9)
    fig.tight_layout()
    saved = atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return saved


def doubling_changes(rows: pd.DataFrame) -> dict[tuple[int, int], float]:
    """Relative change of the held-out error for each doubling ``(low, 2 * low)`` in one variant's ``rows`` of
    :func:`budget_points`, over the seeds run at both budgets only: a cap's later seeds (no half-budget check)
    would otherwise move one end of the mean and hide what the check measured."""
    changes = {}
    budgets = sorted(rows.pretrain_iterations.unique())
    for low in budgets:
        if 2 * low not in budgets:
            continue
        at = {budget: rows[rows.pretrain_iterations == budget].set_index("seed").heldout_error
              for budget in (low, 2 * low)}
        seeds = at[low].index.intersection(at[2 * low].index)
        if len(seeds):
            changes[(int(low), int(2 * low))] = float(at[2 * low][seeds].mean() / at[low][seeds].mean() - 1)
    return changes


def _short(iterations: int) -> str:
    return f"{iterations / 1000:g}k" if iterations >= 1000 else str(iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a study's results folder (every summary.json under it)")
    parser.add_argument("--out", type=Path, default=None, help="where budget.csv and budget.png go (default: folder)")
    parser.add_argument("--final-evals", type=int, default=3, help="evaluations averaged for a run's reward")
    parser.add_argument("--setting", default="default", help="the setting plotted (the CSV holds every one)")
    parser.add_argument("--tolerance", type=float, default=0.1, help="the half-budget rule's largest fall "
                        "(the preset's report.half_budget_tolerance; run_study.sh passes it)")
    args = parser.parse_args()
    points = budget_points(args.folder, args.final_evals)
    if points.empty:
        parser.error(f"no run summaries under {args.folder}")
    out = args.out or args.folder
    atomic_write_text(points.drop(columns="source").to_csv(index=False, float_format="%.6g"), out / "budget.csv")
    plot_budget(points, out / "budget.png", args.setting, args.tolerance)
    print(f"{len(points)} budgets of {points.task.nunique()} tasks: {out / 'budget.csv'}, {out / 'budget.png'}")


if __name__ == "__main__":
    main()
