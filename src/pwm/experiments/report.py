"""A/B report: parity, reward curves, time to thresholds, stability, aggregate statistics, verdict.

Input: the run directories written by :mod:`pwm.experiments.ab` (``summary.json``, ``metrics.csv``,
``pretrain/metrics.csv``). Output in ``out_dir``: ``report.md``, ``report.json`` (tables and verdicts),
``runs.csv`` (one row per run) and PNG plots. :func:`build_report` wires the parts, one module per
job: :mod:`~pwm.experiments.runs` (load), :mod:`~pwm.experiments.statistics` and
:mod:`~pwm.experiments.verdict` (statistics and verdict), :mod:`~pwm.experiments.plots`,
:mod:`~pwm.experiments.markdown`.

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
beat the random policy's by :class:`~pwm.experiments.verdict.LearnedBar`'s margin: the largest of
``std_margin`` random-episode standard deviations, ``min_gain`` of the random reward's magnitude and
``min_scale`` of the task's reward scale, the one the thresholds use) or a world model did not converge
(:class:`~pwm.experiments.verdict.ConvergenceRule`: each run's plateau flag, or the held-out error's drop
from half the pretraining cap to the cap on the checked runs); else
``reject`` when a criterion fails, ``inconclusive`` when one cannot be decided at this number of
seeds, and ``accept`` when all hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pwm.experiments.markdown import render_markdown
from pwm.experiments.plots import plot_aggregate, plot_curves, plot_diagnostics
from pwm.experiments.published import pwm_published, tdmpc2_final
from pwm.experiments.runs import Run, load_runs, run_table, select_runs
from pwm.experiments.statistics import Criteria
from pwm.experiments.verdict import (
    ConvergenceRule, LearnedBar, compare, convergence_judgements, decide, parity, random_bar, task_thresholds)
from pwm.utils.common import atomic_write_text

__all__ = ["BOOTSTRAP_REPS", "THRESHOLDS", "ConvergenceRule", "LearnedBar", "Run", "build_report", "decide", "load_runs"]

#: Defaults of :func:`build_report` (equal to ``report.thresholds`` and ``report.bootstrap_reps`` of
#: ``scripts/cfg/ab.yaml``; a test keeps them equal).
THRESHOLDS = (0.5, 0.8)
BOOTSTRAP_REPS = 2000


def _slug(*parts: str) -> str:
    return "_".join(p.replace("/", "-").replace("=", "-").replace(",", "-") for p in parts)


def build_report(root: str | Path, out_dir: str | Path | None = None, thresholds: tuple[float, ...] = THRESHOLDS,
                 bootstrap_reps: int = BOOTSTRAP_REPS, learned_bar: LearnedBar | None = None,
                 criteria: Criteria | None = None, reference_dir: str | Path | None = None,
                 convergence: ConvergenceRule | None = None) -> dict[str, Any]:
    """Build the A/B report for every run under ``root``; returns the ``report.json`` content.

    ``convergence`` says when world models count as converged (default :class:`ConvergenceRule` ()).
    Comparisons (one per setting, model size and flow variant) come in order of their flow variant's runs,
    most first: a study's A/B grid before its sweeps.

    ``thresholds`` are fractions of each task's published TD-MPC2 reward (``reference_dir``, default
    the repository's ``benchmarks/reference``), or of its observed reward range where none is published.
    """
    criteria, learned_bar = criteria or Criteria(), learned_bar or LearnedBar()
    convergence = convergence or ConvergenceRule()
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(root / "runs" if (root / "runs").is_dir() else root)
    if not runs:
        raise FileNotFoundError(f"no A/B runs (summary.json + metrics.csv) under {root}")
    table = run_table(runs, criteria.final_evals)
    table["convergence"] = convergence_judgements(table, convergence)
    atomic_write_text(table.to_csv(index=False), out_dir / "runs.csv")
    reference_kwargs = {"reference_dir": reference_dir} if reference_dir is not None else {}
    reference = tdmpc2_final(**reference_kwargs)
    pwm_reference = {name: pwm_published(name, **reference_kwargs) for name in ("mt30", "mt80")}
    published = {task: {"tdmpc2_step": reference[task][0] if task in reference else None,
                        "tdmpc2_reward": reference[task][1] if task in reference else None,
                        "pwm_mt30_reward": pwm_reference["mt30"].get(task),
                        "pwm_mt80_reward": pwm_reference["mt80"].get(task)}
                 for task in sorted(table.task.unique())}
    task_targets = {task: task_thresholds(runs, task, list(thresholds), reference) for task in sorted(table.task.unique())}
    pairs = [(setting, model, flow_variant)
             for (setting, model), group in table.groupby(["setting", "model"])
             for flow_variant in sorted(group[group.is_flow].variant.unique())]
    # The main grid first: a study's sweeps run a flow variant on fewer tasks and seeds than its A/B does.
    flow_runs = table.groupby(["setting", "model", "variant"]).size()
    pairs.sort(key=lambda pair: -flow_runs[pair])
    comparisons = [compare(runs, table, setting, model, flow_variant, task_targets, criteria, bootstrap_reps,
                           learned_bar, convergence) for setting, model, flow_variant in pairs]
    parity_table = parity(table)
    learned_bars = {task: sum(random_bar(rows, learned_bar, task_targets[task][1]))
                    for task, rows in table.groupby("task")}
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
              "criteria": vars(criteria), "convergence": vars(convergence), "figures": [f.name for f in figures], "published": published,
              "learned_bars": learned_bars}
    atomic_write_text(json.dumps(report, indent=2, default=float), out_dir / "report.json")
    atomic_write_text(render_markdown(report, parity_table, table), out_dir / "report.md")
    _remove_stale_figures(out_dir, figures)
    return report


def _remove_stale_figures(out_dir: Path, figures: list[Path]) -> None:
    """Delete the figures of an earlier report in ``out_dir`` that this one did not draw (a task whose runs
    moved away), so the folder shows only what ``report.md`` describes; other files are left alone."""
    kept = {figure.name for figure in figures}
    for pattern in ("curves_*.png", "diagnostics_*.png", "aggregate_iqm.png"):
        for path in out_dir.glob(pattern):
            if path.name not in kept:
                path.unlink()
