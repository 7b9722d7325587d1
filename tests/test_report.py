"""A/B report and verdict on synthetic run logs."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from pwm.experiments.report import ConvergenceRule, LearnedBar, Run, build_report, decide, load_runs
from pwm.experiments.runs import run_table
from pwm.experiments.statistics import time_to_threshold


def write_run(root, task, variant, seed, rewards, esnr, grad_norms, wall_per_iter=1.0, pretrain_s=10.0,
              nan_skipped=0, iterations=None, random_reward=0.0, random_std=1.0, converged=True, folder=None,
              summary_extra=None):
    """A run folder like pwm.experiments.ab writes: evaluations every 10 iterations."""
    iterations = iterations or 10 * len(rewards)
    run_dir = root / "runs" / task / "default" / variant / (folder or f"seed{seed}")
    (run_dir / "pretrain").mkdir(parents=True)
    rows = []
    for it in range(iterations):
        row = {"iteration": it, "actor/grad_norm": grad_norms[it % len(grad_norms)], "actor/esnr": esnr,
               "critic/grad_norm": 1.0, "rollout/latent_norm_max": 1.0, "rollout/latent_norm_mean": 0.9,
               "rollout/nonfinite_latents": 0.0, "time/actor_update_s": 0.01,
               "time/train_elapsed_s": wall_per_iter * (it + 1), "actor/predicted_reward": it / 10,
               "actor/saturated_fraction": 1.0 if it >= iterations - 2 else 0.0,
               "critic/value_latent_grad": 2.0 + it if it % 3 == 0 else math.nan,  # logged on every 3rd
               "critic/value_model_gap": -1.0 - it if it % 3 == 0 else math.nan}
        if (it + 1) % 10 == 0:
            row["eval/episode_reward"] = rewards[(it + 1) // 10 - 1]
            row["eval/success"] = 0.0
            row["eval/episode_length"] = 500
            row["critic_eval/value_bias"] = float(it)
            row["wm_eval/imagined_policy_gap"] = 0.01 * it
        rows.append(row)
    pd.DataFrame(rows).to_csv(run_dir / "metrics.csv", index=False)
    pd.DataFrame([{"iteration": 9, "wm/dynamics_loss": 0.1, "wm/reward_loss": 1.0, "time/wm_update_s": 0.02,
                   "wm_eval/heldout_error": 0.5, "wm_eval/latent_nmse_1": 0.1, "wm_eval/latent_nmse_H": 0.4,
                   "wm_eval/reward_corr_rollout": 0.9, "wm_eval/reward_nmse_rollout": 0.2,
                   "wm_eval/latent_spread": 0.08, "wm_eval/latent_vs_copy_1": 0.4, "wm_eval/copy_nmse_1": 0.25},
                  {"iteration": 19, "wm/dynamics_loss": 0.1, "wm/reward_loss": 1.0, "time/wm_update_s": 0.02,
                   "wm_eval/heldout_error": 0.7, "wm_eval/latent_nmse_1": 0.3, "wm_eval/latent_nmse_H": 0.6,
                   "wm_eval/reward_corr_rollout": 0.8, "wm_eval/reward_nmse_rollout": 0.3,
                   "wm_eval/latent_spread": 0.02, "wm_eval/latent_vs_copy_1": 0.97, "wm_eval/copy_nmse_1": 0.0015}]).to_csv(
        run_dir / "pretrain" / "metrics.csv", index=False)
    summary = {"task": task, "variant": variant, "is_flow": variant != "baseline", "seed": seed, "setting": "default",
               "iterations": iterations, "expected_iterations": 10 * len(rewards), "final_reward": rewards[-1],
               "final_success": 0.0, "best_reward": max(rewards), "train_elapsed_s": wall_per_iter * iterations,
               "pretrain_elapsed_s": pretrain_s, "params/world_model": 1000 + (5 if variant != "baseline" else 0),
               "params/actor": 50, "params/critic": 70, "nan_skipped_steps": {"wm": nan_skipped, "actor": 0, "critic": 0},
               "random_reward": random_reward, "random_reward_std": random_std, "pretrain_converged": converged,
               "pretrain_iterations": 20, **(summary_extra or {})}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def populate(root, flow_better_on_b=False):
    for seed in range(3):
        noise = 0.5 * seed
        # task a: flow climbs faster and ends higher
        write_run(root, "task-a", "baseline", seed, [10 + noise, 40 + noise, 80 + noise], 1.0, [1.0, 3.0])
        write_run(root, "task-a", "flow-K4-uniform", seed, [50 + noise, 90 + noise, 100 + noise], 2.0, [1.0, 1.5])
        # task b: baseline ends higher unless asked otherwise
        flow_b = 70 if flow_better_on_b else 30
        write_run(root, "task-b", "baseline", seed, [20 + noise, 40 + noise, 60 + noise], 1.0, [1.0, 3.0])
        write_run(root, "task-b", "flow-K4-uniform", seed, [20 + noise, 25 + noise, flow_b + noise], 2.0, [1.0, 1.5])


def test_time_to_threshold_hand_computation(tmp_path):
    run_dir = write_run(tmp_path, "t", "baseline", 0, [10, 50, 90], 1.0, [1.0], wall_per_iter=2.0, pretrain_s=5.0)
    run = load_runs(tmp_path)[0]
    assert isinstance(run, Run) and run.path == run_dir
    # reward 50 first reached (and held) at the 2nd evaluation: iteration 19, wall 5 + 2 * 20 = 45 s
    assert time_to_threshold(run.evals, 50.0, hold=2) == (19.0, 45.0)
    assert time_to_threshold(run.evals, 90.0, hold=1) == (29.0, 65.0)
    assert time_to_threshold(run.evals, 90.0, hold=2) == (math.inf, math.inf)  # the last evaluation alone
    assert time_to_threshold(run.evals, 91.0, hold=1) == (math.inf, math.inf)


def test_run_table_averages_the_critic_slope_and_gap_over_the_iterations_that_logged_them(tmp_path):
    write_run(tmp_path, "t", "baseline", 0, [10, 50, 90], 1.0, [1.0])
    (row,) = run_table(load_runs(tmp_path)).to_dict("records")
    assert row["value_latent_grad_mean"] == pytest.approx(np.mean([2.0 + it for it in range(0, 30, 3)]))
    assert row["value_model_gap_mean"] == pytest.approx(np.mean([-1.0 - it for it in range(0, 30, 3)]))


def test_run_table_reports_the_critics_overvaluation_at_the_final_evaluations(tmp_path):
    write_run(tmp_path, "t", "baseline", 0, [10, 50, 90], 1.0, [1.0])  # evaluations at iterations 9, 19, 29
    runs = load_runs(tmp_path)
    assert run_table(runs, final_evals=2).loc[0, "value_bias_final"] == pytest.approx((19 + 29) / 2)
    assert run_table(runs, final_evals=1).loc[0, "value_bias_final"] == pytest.approx(29)


def test_report_accepts_when_all_criteria_hold(tmp_path):
    populate(tmp_path)
    report = build_report(tmp_path, bootstrap_reps=200)
    (comparison,) = report["comparisons"]
    assert comparison["flow_variant"] == "flow-K4-uniform" and comparison["tasks"] == ["task-a", "task-b"]
    assert comparison["verdict"] == "accept", comparison["criteria"]
    assert "flow better on 1, tied on 0, worse on 1, inconclusive on 0 of 2 tasks" in \
        comparison["criteria"]["reward_on_half_of_tasks"]["detail"]
    assert "task-a" in comparison["criteria"]["faster_convergence_on_subset"]["detail"]
    stability = comparison["stability"]
    assert stability["flow"]["esnr_mean"] == pytest.approx(2.0)
    # grad norms alternate 1, 3 (baseline) and 1, 1.5 (flow): CV = std / mean over 30 iterations
    cv = {k: np.std(np.resize(v, 30), ddof=1) / np.mean(np.resize(v, 30)) for k, v in (("baseline", [1.0, 3.0]),
                                                                                      ("flow", [1.0, 1.5]))}
    assert stability["baseline"]["actor_grad_norm_cv"] == pytest.approx(cv["baseline"])
    assert stability["flow"]["actor_grad_norm_cv"] == pytest.approx(cv["flow"])
    per_task = {t["task"]: t for t in comparison["per_task"]}
    # a run's reward is the mean of its last 3 evaluations: (50 + 90 + 100) / 3 + mean noise 0.5
    assert per_task["task-a"]["flow_reward"] == pytest.approx(80.5) and per_task["task-a"]["baseline_seeds"] == 3
    assert per_task["task-a"]["outcome_wall"] == "flow" and per_task["task-b"]["outcome_wall"] == "baseline"
    # task-a's thresholds are fixed from its observed range [10, 101]; flow holds >= 82.8 from its 2nd
    # evaluation (wall 10 s pretraining + 20 s), the baseline never does
    assert per_task["task-a"]["targets"]["80%"] == pytest.approx(10 + 0.8 * 91)
    assert per_task["task-a"]["flow_time_to_80%"] == pytest.approx(30.0)
    assert per_task["task-a"]["baseline_time_to_80%"] == math.inf
    iqm = comparison["iqm"]
    assert iqm["baseline"]["ci_low"] <= iqm["baseline"]["iqm"] <= iqm["baseline"]["ci_high"]
    assert 0.0 <= comparison["probability_of_improvement"]["p"] <= 1.0
    wall = comparison["iqm_wall"]
    assert wall["flow"]["ci_low"] <= wall["flow"]["iqm"] <= wall["flow"]["ci_high"]
    assert 0.0 <= comparison["probability_of_improvement_wall"]["p"] <= 1.0
    assert report["published"]["task-a"] == {"tdmpc2_step": None, "tdmpc2_reward": None, "pwm_mt30_reward": None,
                                             "pwm_mt80_reward": None}
    out = tmp_path / "report"
    for name in report["figures"] + ["report.md", "report.json", "runs.csv"]:
        assert (out / name).stat().st_size > 0, name
    # a task whose runs moved away loses its figures on the next build; other files stay
    for stale in ("curves_task-gone_default.png", "diagnostics_task-gone_default.png", "notes.png"):
        (out / stale).write_bytes(b"old")
    assert build_report(tmp_path, bootstrap_reps=50)["figures"] == report["figures"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(report["figures"] + ["notes.png"])
    text = (out / "report.md").read_text()
    assert "**ACCEPT**" in text and "| default | flow-K4-uniform | 6 | 1,005 |" in text
    assert "| equal wall-clock |" in text and "| task-a | default | flow-K4-uniform | 3 | 80.5 ± 0.4 | n/a | n/a | n/a |" in text
    assert len(pd.read_csv(out / "runs.csv")) == 12


def test_report_rejects_and_names_failed_criteria(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "task-a", "baseline", seed, [10, 50, 90], 2.0, [1.0, 1.1])
        write_run(tmp_path, "task-a", "flow-K2-midpoint", seed, [5, 20, 40], 1.0, [1.0, 4.0], nan_skipped=3,
                  iterations=20)  # unfinished: 20 of 30 iterations
    report = build_report(tmp_path, bootstrap_reps=100)
    (comparison,) = report["comparisons"]
    assert comparison["verdict"] == "reject"
    assert set(comparison["failed"]) == {"runs_complete", "reward_on_half_of_tasks", "faster_convergence_on_subset",
                                         "stability_or_esnr"}
    assert "preliminary" in (tmp_path / "report" / "report.md").read_text()


def _per_task(outcomes, times):
    return pd.DataFrame([{"task": f"t{i}", "outcome_wall": o, "baseline_time_to_high": tb, "flow_time_to_high": tf}
                         for i, (o, (tb, tf)) in enumerate(zip(outcomes, times))])


STABLE = {"baseline": {"actor_grad_norm_cv": 0.2, "esnr_mean": 1.0, "nan_skipped": 0.0},
          "flow": {"actor_grad_norm_cv": 0.3, "esnr_mean": 0.5, "nan_skipped": 0.0}}


def test_decide_criteria_individually():
    # a tie and a win on 2 of 4 tasks is "at least half"
    result = decide(_per_task(["tie", "flow", "baseline", "baseline"], [(10, 5), (math.inf, 9), (1, 2), (1, 2)]),
                    {**STABLE, "flow": {**STABLE["flow"], "nan_skipped": -1.0}}, complete=True)
    assert result["verdict"] == "accept"
    assert "t0, t1" in result["criteria"]["faster_convergence_on_subset"]["detail"]  # t1: baseline never got there
    assert "fewer skipped" in result["criteria"]["stability_or_esnr"]["detail"]
    result = decide(_per_task(["baseline", "flow", "baseline"], [(1, 2), (1, math.inf), (1, 1)]), STABLE,
                    complete=False)
    assert result["failed"] == ["runs_complete", "reward_on_half_of_tasks", "faster_convergence_on_subset",
                                "stability_or_esnr"]
    assert result["criteria"]["reward_on_half_of_tasks"]["detail"] == \
        "at equal wall-clock: flow better on 1, tied on 0, worse on 2, inconclusive on 0 of 3 tasks"
    # ties alone are not a pass (every reward 0 used to ACCEPT); undecided tasks make it inconclusive
    fast, stable = [(2, 1)] * 3, {**STABLE, "flow": {**STABLE["flow"], "esnr_mean": 2.0}}
    result = decide(_per_task(["tie"] * 3, fast), stable, complete=True)
    assert result["verdict"] == "reject" and result["failed"] == ["reward_on_half_of_tasks"]
    # 1 of 3 decided for flow, 1 undecided: half is still reachable
    result = decide(_per_task(["flow", "inconclusive", "baseline"], fast), stable, complete=True)
    assert result["verdict"] == "inconclusive" and result["inconclusive"] == ["reward_on_half_of_tasks"]
    assert decide(_per_task(["flow", "tie", "baseline"], fast), stable, complete=True)["verdict"] == "accept"
    assert decide(_per_task(["flow", "baseline", "baseline"], fast), stable, complete=True)["verdict"] == "reject"


def test_learning_margin_hand_computation(tmp_path):
    """Both variants clear random + max(2 std, 10% of random): the verdict is judged, not invalid."""
    for seed in range(2):
        write_run(tmp_path, "task-a", "baseline", seed, [30, 30, 30], 1.0, [1.0, 3.0], random_reward=25.0,
                  random_std=2.0)
        write_run(tmp_path, "task-a", "flow-K4-uniform", seed, [20, 40, 60], 2.0, [1.0, 1.5], random_reward=25.0,
                  random_std=2.0)
    (comparison,) = build_report(tmp_path, bootstrap_reps=50)["comparisons"]
    # margin = max(2 * random_std, 0.1 * random) = max(4, 2.5) = 4: flow's 40 counts, baseline's 30 (>= 29) too
    (task,) = comparison["per_task"]
    assert task["learned_margin"] == pytest.approx(4.0) and task["baseline_learned"] and task["flow_learned"]
    assert comparison["invalid_reasons"] == [] and comparison["verdict"] in ("accept", "reject")
    assert comparison["runs_below_random_bar"] == []


def test_learning_margin_floor_of_the_task_reward_scale(tmp_path):
    """Where a random policy scores about 0 with a tiny spread (finger-spin: 0.4 +- 1.2), 2 std and 10% of
    random would count 3.2 as learned; the floor of 5% of the task's reward scale (TD-MPC2's published
    reward) calls a policy at 7 what it is, a failure."""
    from pwm.experiments.published import tdmpc2_final

    scale = tdmpc2_final()["finger-spin"][1]
    for seed in range(2):
        write_run(tmp_path, "finger-spin", "baseline", seed, [50, 90, 100], 1.0, [1.0], random_reward=0.4,
                  random_std=1.2)
        write_run(tmp_path, "finger-spin", "flow-K4-uniform", seed, [5, 7, 7], 1.0, [1.0], random_reward=0.4,
                  random_std=1.2)
    (comparison,) = build_report(tmp_path, bootstrap_reps=50)["comparisons"]  # learned_min_scale=0.05
    (task,) = comparison["per_task"]
    assert task["learned_margin"] == pytest.approx(0.05 * scale)  # max(2.4, 0.04, 0.05 * 991) = 49.6
    assert task["baseline_learned"] and not task["flow_learned"] and comparison["verdict"] == "invalid"
    assert (f"finger-spin: flow-K4-uniform did not learn (final reward 6.3 < random 0.4 + margin {0.05 * scale:.1f})"
            in comparison["invalid_reasons"][0])
    (comparison,) = build_report(tmp_path, bootstrap_reps=50, learned_bar=LearnedBar(min_scale=0.0))["comparisons"]
    assert comparison["per_task"][0]["learned_margin"] == pytest.approx(2.4) and comparison["per_task"][0]["flow_learned"]


def test_a_single_seed_below_the_random_bar_is_named_in_the_report(tmp_path):
    for seed, final in enumerate([90.0, 20.0]):  # flow: (46.7 + 23.3) / 2 clears 25 + 4, seed 1 alone does not
        write_run(tmp_path, "task-a", "baseline", seed, [10, 40, 60], 1.0, [1.0], random_reward=25.0, random_std=2.0)
        write_run(tmp_path, "task-a", "flow-K4-uniform", seed, [10, 40, final], 1.0, [1.0], random_reward=25.0,
                  random_std=2.0)
    (comparison,) = build_report(tmp_path, bootstrap_reps=50)["comparisons"]
    assert comparison["invalid_reasons"] == []
    assert comparison["runs_below_random_bar"] == [
        "task-a: flow-K4-uniform seed 1 did not learn (final reward 23.3 < 29.0)"]
    assert "- note, single run: task-a: flow-K4-uniform seed 1" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("baseline_final, converged, reason", [
    (28.0, True, "task-a: baseline did not learn (final reward 19.3 < random 25.0 + margin 6.0)"),
    (90.0, False, "flow-K4-uniform: world model did not converge in 2 of 2 runs"),
    (90.0, None, "flow-K4-uniform: world-model convergence unchecked in 2 of 2 runs"),
])
def test_invalid_verdict_names_the_variant_and_the_reason(tmp_path, baseline_final, converged, reason):
    # margin = max(2 * 3, 10% of 25, 5% of the observed reward range 10..95) = 6
    for seed in range(2):
        write_run(tmp_path, "task-a", "baseline", seed, [10, 20, baseline_final], 1.0, [1.0, 3.0], random_reward=25.0,
                  random_std=3.0)
        write_run(tmp_path, "task-a", "flow-K4-uniform", seed, [20, 40, 95], 2.0, [1.0, 1.5], random_reward=25.0,
                  random_std=3.0, converged=converged)
    report = build_report(tmp_path, bootstrap_reps=50)
    (comparison,) = report["comparisons"]
    assert comparison["verdict"] == "invalid"
    assert any(r.startswith(reason) for r in comparison["invalid_reasons"]), comparison["invalid_reasons"]
    assert comparison["criteria"]["reward_on_half_of_tasks"]["passed"]  # the criteria are still reported
    text = (tmp_path / "report" / "report.md").read_text()
    assert "**INVALID**" in text and f"- INVALID: {reason}" in text
    if "did not learn" in reason:  # imagined: iterations 27-29 / 10 = 2.8 per step; real: 19.3 / 500 steps;
        # saturated: the last 3 iterations (the tail mean's 10%) log 0, 1, 1
        assert (f"{reason}; imagined reward 2.8/step vs real {19.3333 / 500:.3g}/step; on its evaluation states the "
                "model imagines +0.19 reward/step more than the policy earns; policy saturated (|a| > 0.99) "
                "in 67% of action dimensions") in comparison["invalid_reasons"]


def test_half_budget_convergence_names_the_unconverged_and_the_unchecked(tmp_path):
    """report.convergence=half_budget: per task and variant, a checked run whose held-out error fell by more than
    the tolerance from half the cap to the cap did not converge, one whose error rose by more overtrained, and a
    task without a checked run is unchecked; the plateau flags (all False here) are not read."""
    def checked(half, final):
        return {"pretrain_half_heldout_error_final": half, "pretrain_heldout_error_final": final}

    for seed in range(2):  # seed 0 of each variant ran the check; flow's error fell 15%, the baseline's 5%
        write_run(tmp_path, "task-a", "baseline", seed, [10, 40, 60], 1.0, [1.0], converged=False,
                  summary_extra=checked(0.1, 0.095) if seed == 0 else {"pretrain_heldout_error_final": 0.09})
        write_run(tmp_path, "task-a", "flow-K4-uniform", seed, [10, 40, 90], 1.0, [1.0], converged=False,
                  summary_extra=checked(0.1, 0.085) if seed == 0 else None)
        write_run(tmp_path, "task-b", "baseline", seed, [10, 40, 60], 1.0, [1.0], converged=False)
        write_run(tmp_path, "task-b", "flow-K4-uniform", seed, [10, 40, 90], 1.0, [1.0], converged=False,
                  summary_extra=checked(0.1, 0.1) if seed == 1 else None)
        write_run(tmp_path, "task-c", "baseline", seed, [10, 40, 60], 1.0, [1.0], converged=False,
                  summary_extra=checked(0.1, 0.108) if seed == 0 else None)  # 8% worse: within the tolerance
        write_run(tmp_path, "task-c", "flow-K4-uniform", seed, [10, 40, 90], 1.0, [1.0], converged=False,
                  summary_extra=checked(0.1, 0.125) if seed == 0 else None)  # 25% worse: overtrained
    rule = ConvergenceRule("half_budget", 0.1)
    (comparison,) = build_report(tmp_path, bootstrap_reps=50, convergence=rule)["comparisons"]
    assert comparison["verdict"] == "invalid"
    assert comparison["invalid_reasons"] == [
        "task-a: flow-K4-uniform's world model did not converge (seed 0: held-out error 0.1 at half the cap, 0.085 at "
        "the cap, 15% lower; more than 10%)",
        "task-b: baseline's world-model convergence unchecked (no run of pretrain.half_budget_seeds pretrained for "
        "half the cap)",
        "task-c: flow-K4-uniform's world model overtrained (seed 0: held-out error 0.1 at half the cap, 0.125 at the "
        "cap, 25% higher; more than 10%): half the cap gives the better model"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| 0.1 -> 0.085 (-15%, seed 0) |" in text and "| 0.1 -> 0.095 (-5%, seed 0) |" in text
    assert "| 0.1 -> 0.125 (+25%, seed 0) |" in text

    def quality_cell(task, variant):  # the world-model quality table's converged column: the verdicts' rule
        (cell,) = re.findall(rf"^\| {task} \| \S+ \| {variant} \| 2 \| ([^|]+) \| .* -> .*$", text, re.MULTILINE)
        return cell

    assert [quality_cell(task, variant) for task, variant in (
        ("task-a", "flow-K4-uniform"), ("task-a", "baseline"), ("task-b", "baseline"), ("task-b", "flow-K4-uniform"),
        ("task-c", "baseline"), ("task-c", "flow-K4-uniform"))] == [
        "not converged: seed 0", "converged: seed 0", "unchecked", "converged: seed 1", "converged: seed 0",
        "overtrained: seed 0"]  # the plateau flags all say not converged
    # task-a's flow at twice its cap (20 -> 40 iterations), archived: a doubling that bought nothing forgives the
    # fall (its optimum lies between); one that bought more than the tolerance, or another seed's, does not
    def doubled_archive(name, seed, error):
        write_run(tmp_path / name, "task-a", "flow-K4-uniform", seed, [10, 40, 90], 1.0, [1.0],
                  summary_extra={"pretrain_iterations": 40, "pretrain_heldout_error_final": error})
        return str(tmp_path / name)

    bought_nothing, bought_much, other_seed = (doubled_archive("flat", 0, 0.09), doubled_archive("fell", 0, 0.07),
                                               doubled_archive("seed1", 1, 0.09))
    for folders, forgiven in (((bought_nothing,), True), ((bought_much, other_seed), False), ((other_seed,), False)):
        rule = ConvergenceRule("half_budget", 0.1, folders)
        (comparison,) = build_report(tmp_path, bootstrap_reps=50, convergence=rule)["comparisons"]
        assert any(r.startswith("task-a: flow-K4-uniform's world model did not converge")
                   for r in comparison["invalid_reasons"]) is not forgiven, folders
        assert len(comparison["invalid_reasons"]) == 3 - forgiven
        text = (tmp_path / "report" / "report.md").read_text()
        assert (quality_cell("task-a", "flow-K4-uniform") == "converged by its 2x run: seed 0") is forgiven
    # the double that bought 0.085 -> 0.07 is quoted beside the fall it does not forgive
    assert comparison["invalid_reasons"][0] == ("task-a: flow-K4-uniform's world model did not converge (seed 0: "
                                                "held-out error 0.1 at half the cap, 0.085 at the cap, 15% lower; "
                                                "more than 10%)")
    (comparison,) = build_report(tmp_path, bootstrap_reps=50, convergence=ConvergenceRule(
        "half_budget", 0.1, (bought_much,)))["comparisons"]
    assert comparison["invalid_reasons"][0] == ("task-a: flow-K4-uniform's world model did not converge (seed 0: "
                                                "held-out error 0.1 at half the cap, 0.085 at the cap, 15% lower; "
                                                "more than 10%; at twice the cap 0.07, 18% lower again)")
    for seed in range(2):  # checked at 10% too on task-b: under a 30% tolerance the comparison is judged
        write_run(tmp_path, "task-b", "baseline", seed, [10, 40, 60], 1.0, [1.0], converged=False,
                  folder=f"checked{seed}", summary_extra=checked(0.1, 0.09))
    (comparison,) = build_report(tmp_path, bootstrap_reps=50, convergence=ConvergenceRule("half_budget", 0.3))[
        "comparisons"]
    assert comparison["invalid_reasons"] == [] and comparison["verdict"] != "invalid"
    # the plateau rule reads the flags, which say no, and so does the quality table
    (comparison,) = build_report(tmp_path, bootstrap_reps=50)["comparisons"]
    assert any("world model did not converge in" in r for r in comparison["invalid_reasons"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert quality_cell("task-a", "baseline") == "not converged: seed 0, 1"


def test_a_policy_setting_is_judged_by_the_double_of_the_world_models_it_pretrains():
    """Settings that differ only in train.* (policy extraction) pretrain the same world models, so a finetune
    run's fall is forgiven by the default setting's double; a setting of its own pretraining (alg.horizon=10)
    is not, nor is another task's, seed's, dataset's or budget's run."""
    from types import SimpleNamespace

    from pwm.experiments.runs import pretraining_setting
    from pwm.experiments.verdict import _doubled_error

    assert pretraining_setting("default") == pretraining_setting("train.train_world_model=True") == "default"
    assert pretraining_setting("alg.horizon=10,train.iterations=5") == "alg.horizon=10"
    assert pretraining_setting("pretrain.lr_final=0.1,train.finetune_lr_scale=0.5") == "pretrain.lr_final=0.1"
    assert pretraining_setting("alg.world_model_config.units=[64,64]") == "alg.world_model_config.units=[64,64]"
    budgets = pd.DataFrame([("cup-catch", "default", "baseline", 0, "a" * 12, 40000, 0.08, 199.0, "x"),
                            ("cup-catch", "alg.horizon=20", "baseline", 0, "a" * 12, 40000, 0.5, 199.0, "x")],
                           columns=["task", "setting", "variant", "seed", "data", "pretrain_iterations",
                                    "heldout_error", "final_reward", "source"])

    def row(setting, task="cup-catch", seed=0, data="a" * 64, iterations=20000):
        return SimpleNamespace(task=task, setting=setting, variant="baseline", seed=seed, data_sha256=data,
                               pretrain_iterations=iterations)

    assert _doubled_error(budgets, row("train.train_world_model=True")) == 0.08
    assert _doubled_error(budgets, row("default")) == 0.08
    assert _doubled_error(budgets, row("alg.horizon=20,train.train_world_model=True")) == 0.5
    for other in (row("alg.horizon=10"), row("default", task="cartpole-balance"), row("default", seed=1),
                  row("default", data="b" * 64), row("default", iterations=40000)):
        assert _doubled_error(budgets, other) is None, other


def test_runs_on_other_data_or_another_cpu_make_the_comparison_invalid_naming_them(tmp_path):
    """A pair read different datasets, or ran on different CPUs: both are named, with the runs of each
    value. Runs that recorded neither (before these were recorded) are not judged; a run that did not
    record one beside runs that did is a difference."""
    def run(task, variant, seed, data, cpu):
        write_run(tmp_path, task, variant, seed, [10, 40, 90], 1.0, [1.0],
                  summary_extra={key: value for key, value in (("data_sha256", data), ("cpu", cpu)) if value})

    for seed in range(2):
        run("task-a", "baseline", seed, "a" * 64, "Intel Xeon+avx512")
        run("task-a", "flow-K4-uniform", seed, "a" * 64 if seed == 0 else "b" * 64, "Intel Xeon+avx512")
        run("task-b", "baseline", seed, None, None)
        run("task-b", "flow-K4-uniform", seed, None, None)
        run("task-c", "baseline", seed, "c" * 64, "Intel Xeon+avx512")
        run("task-c", "flow-K4-uniform", seed, "c" * 64 if seed == 0 else None, "AMD EPYC" if seed == 1 else
            "Intel Xeon+avx512")
    (comparison,) = build_report(tmp_path, bootstrap_reps=50)["comparisons"]
    assert comparison["verdict"] == "invalid"
    assert comparison["invalid_reasons"] == [
        "task-a: runs on 2 different datasets (a pair must read the same data): aaaaaaaaaaaa: baseline seed 0, "
        "baseline seed 1, flow-K4-uniform seed 0; bbbbbbbbbbbb: flow-K4-uniform seed 1",
        "task-c: runs on 2 different datasets (a pair must read the same data): cccccccccccc: baseline seed 0, "
        "baseline seed 1, flow-K4-uniform seed 0; unrecorded: flow-K4-uniform seed 1",
        "task-c: runs on 2 different CPUs (wall-clock is not comparable across machines): AMD EPYC: flow-K4-uniform "
        "seed 1; Intel Xeon+avx512: baseline seed 0, baseline seed 1, flow-K4-uniform seed 0"]


@pytest.mark.parametrize("rule, tolerance, key", [("budget", 0.1, "report.convergence"),
                                                  ("half_budget", 1.0, "report.half_budget_tolerance"),
                                                  ("half_budget", -0.1, "report.half_budget_tolerance")])
def test_bad_convergence_settings_are_named(rule, tolerance, key):
    with pytest.raises(ValueError, match=key):
        ConvergenceRule(rule, tolerance)


def test_runs_table_keeps_the_heldout_scores_of_the_kept_pretraining_evaluation(tmp_path):
    write_run(tmp_path, "task-a", "baseline", 0, [10, 20, 30], 1.0, [1.0])
    table = pd.read_csv(_report_dir(tmp_path) / "runs.csv")
    # two evaluations: heldout_error 0.5 (kept: the lower) then 0.7
    assert table.heldout_latent_nmse_1.item() == pytest.approx(0.1)
    assert table.heldout_reward_corr.item() == pytest.approx(0.9)
    assert table.heldout_latent_spread.item() == pytest.approx(0.08) and table.first_latent_spread.item() == 0.08


def test_a_shrinking_latent_spread_shows_first_and_kept_values(tmp_path):
    run_dir = write_run(tmp_path, "task-a", "flow-K4-uniform", 0, [10, 20, 30], 1.0, [1.0])
    pretrain = pd.read_csv(run_dir / "pretrain" / "metrics.csv")
    pretrain.loc[0, "wm_eval/heldout_error"] = 0.9  # now the second evaluation is the kept one
    pretrain.to_csv(run_dir / "pretrain" / "metrics.csv", index=False)
    report_dir = _report_dir(tmp_path)
    table = pd.read_csv(report_dir / "runs.csv")
    assert table.first_latent_spread.item() == pytest.approx(0.08)
    assert table.heldout_latent_spread.item() == pytest.approx(0.02) and table.heldout_latent_nmse_1.item() == 0.3
    # the kept evaluation's model is no better than copying its slow latents: the copy column says so
    assert table.heldout_latent_vs_copy_1.item() == 0.97 and table.heldout_copy_nmse_1.item() == 0.0015
    assert ("| task-a | default | flow-K4-uniform | 1 | converged: seed 0 | n/a | - | 0.3000 | 0.970 (0.0015) "
            "| 0.6000 |" in (report_dir / "report.md").read_text())
    assert "| 0.0800 -> 0.0200 |" in (report_dir / "report.md").read_text()


def test_imagined_and_real_reward_per_step_by_hand(tmp_path):
    write_run(tmp_path, "task-a", "baseline", 0, [100, 200, 300], 1.0, [1.0])  # 30 iterations
    report_dir = _report_dir(tmp_path)
    table = pd.read_csv(report_dir / "runs.csv")
    # imagined: the last 10% of 30 logged values (iterations 27, 28, 29) / 10; real: final reward / 500 steps
    assert table.imagined_reward_per_step.item() == pytest.approx((2.7 + 2.8 + 2.9) / 3)
    assert table.real_reward_per_step.item() == pytest.approx(table.final_reward.item() / 500)
    text = (report_dir / "report.md").read_text()
    ratio = table.imagined_reward_per_step.item() / table.real_reward_per_step.item()
    assert f"| task-a | default | baseline | 1 | 2.800 | {table.real_reward_per_step.item():.3f} | {ratio:.1f} |" in text


def _report_dir(root):
    build_report(root, bootstrap_reps=20)
    return root / "report"


def _set_size(run_dir, latent):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["alg"] = {"world_model_config": {"latent_dim": latent, "units": [8, 8]}, "actor_config": {"units": [4]}}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_sizes_are_never_mixed_and_unpaired_seeds_are_listed_not_compared(tmp_path):
    for seed in range(2):
        _set_size(write_run(tmp_path, "task-a", "baseline", seed, [10, 50, 90], 1.0, [1.0]), 16)
        _set_size(write_run(tmp_path, "task-a", "flow-K4-uniform", seed, [10, 50, 90], 1.0, [1.0]), 16)
    _set_size(write_run(tmp_path, "task-a", "baseline", 0, [0, 0, 0], 1.0, [1.0], folder="big0"), 64)
    for seed in range(2):  # flow seed 1 has no baseline partner at this size
        _set_size(write_run(tmp_path, "task-a", "flow-K4-uniform", seed, [50, 60, 70], 1.0, [1.0],
                            folder=f"big{seed}"), 64)
    report = build_report(tmp_path, bootstrap_reps=20)
    by_model = {c["model"]: c for c in report["comparisons"]}
    assert set(by_model) == {"latent16-wm8x8-actor4", "latent64-wm8x8-actor4"}
    small, large = by_model["latent16-wm8x8-actor4"], by_model["latent64-wm8x8-actor4"]
    assert [t["seeds"] for t in small["per_task"]] == [[0, 1]] and small["unpaired_runs"] == []
    assert [t["seeds"] for t in large["per_task"]] == [[0]]
    assert large["unpaired_runs"] == ["task-a: flow-K4-uniform seed 1"]
    assert small["per_task"][0]["outcome_iterations"] == "tie"  # identical rewards
    assert large["per_task"][0]["baseline_reward"] == 0.0  # the small baseline's rewards did not leak in


def test_archived_runs_round_trip_and_restore_skips_what_exists(tmp_path):
    from pwm.experiments.archive import restore, save

    root = tmp_path / "ab"
    populate(root)
    (root / "runs" / "task-a" / "default" / "baseline" / "seed9").mkdir(parents=True)  # unfinished: no summary
    checked = root / "runs" / "task-a" / "default" / "baseline" / "seed0"  # ran the half-budget check
    (checked / "pretrain_half").mkdir()
    (checked / "pretrain_half" / "metrics.csv").write_text((checked / "pretrain" / "metrics.csv").read_text())
    archive = tmp_path / "archive"
    assert save(root, archive) == 12 and save(root, archive) == 0  # only what the archive lacks
    assert not list(archive.rglob("checkpoint.pt")) and len(list(archive.rglob("metrics.csv.gz"))) == 25  # policy + pretraining
    assert (archive / "task-a" / "default" / "baseline" / "seed0" / "pretrain_half" / "metrics.csv.gz").exists()
    original, archived = build_report(root, bootstrap_reps=50), build_report(archive, tmp_path / "r2", bootstrap_reps=50)
    for a, b in zip(original["comparisons"][0]["per_task"], archived["comparisons"][0]["per_task"]):
        assert b["flow_reward"] == pytest.approx(a["flow_reward"], rel=1e-5)
        assert b["baseline_time_to_80%"] == pytest.approx(a["baseline_time_to_80%"], rel=1e-5)
    fresh = tmp_path / "fresh"
    partial = fresh / "runs" / "task-a" / "default" / "baseline" / "seed0"
    partial.mkdir(parents=True)
    (partial / "metrics.csv").write_text("iteration\n0\n")  # an interrupted attempt: replaced by the archive
    assert restore(archive, fresh) == 12 and restore(archive, fresh) == 0
    assert not (partial / "metrics.csv").exists() and (partial / "metrics.csv.gz").exists()
    assert (partial / "pretrain_half" / "metrics.csv.gz").exists()
    assert build_report(fresh, bootstrap_reps=50)["comparisons"][0]["verdict"] == original["comparisons"][0]["verdict"]


def test_settings_side_by_side_lists_every_variant_with_its_learned_count(tmp_path):
    """A task with a K sweep gets one row per variant; a task with only the A/B pair is not listed."""
    for seed, (k2_final, k4_final) in enumerate([(28.0, 40.0), (35.0, 41.0)]):
        for variant, final in (("baseline", 31.0), ("flow-K4-uniform", k4_final), ("flow-K2-uniform", k2_final)):
            write_run(tmp_path, "task-a", variant, seed, [final] * 3, 1.0, [1.0, 3.0], random_reward=25.0,
                      random_std=2.0)
        for variant in ("baseline", "flow-K4-uniform"):
            write_run(tmp_path, "task-b", variant, seed, [50.0] * 3, 1.0, [1.0, 3.0], random_reward=25.0,
                      random_std=2.0)
    report = build_report(tmp_path, out_dir=tmp_path / "out", bootstrap_reps=50)
    assert report["learned_bars"]["task-a"] == pytest.approx(29.0)  # 25 + max(2 * 2, 0.1 * 25)
    # the A/B grid's flow variant (4 runs) before the sweep's (2), although its name sorts after
    assert [c["flow_variant"] for c in report["comparisons"]] == ["flow-K4-uniform", "flow-K2-uniform"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert re.findall(r"^### (flow-K\d-uniform) vs baseline", text, flags=re.M) == ["flow-K4-uniform", "flow-K2-uniform"]
    section = text.split("## Settings side by side (sweeps)")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| task-")]
    assert [row.split(" | ")[2] for row in rows] == ["baseline", "flow-K2-uniform", "flow-K4-uniform"]
    # flow-K2: finals 28 and 35 against the bar 29 -> one seed of two learned, mean 31.5 ± 3.5
    assert rows[1].startswith("| task-a | default | flow-K2-uniform | 2 | 31.5 ± 3.5 | 1/2 |")
    assert rows[0].split(" | ")[5] == "2/2" and rows[2].split(" | ")[5] == "2/2"


def test_report_shows_the_share_of_saturated_actions(tmp_path):
    write_run(tmp_path, "task-a", "baseline", 0, [10, 20, 30], 1.0, [1.0])  # the last 3 iterations log 0, 1, 1
    write_run(tmp_path, "task-a", "flow-K4-uniform", 0, [10, 20, 30], 1.0, [1.0])
    build_report(tmp_path, bootstrap_reps=20)
    table = pd.read_csv(_report_dir(tmp_path) / "runs.csv")
    assert table.saturated_fraction.tolist() == pytest.approx([2 / 3, 2 / 3])
    text = (_report_dir(tmp_path) / "report.md").read_text()
    assert "| imagined / real | closed-loop gap | saturated | critic overvaluation |" in text and "| 67% |" in text
    # value_bias logs the iteration at each evaluation (9, 19, 29), the closed-loop gap 0.01 times it; the
    # report's final_evals is 3
    assert "| 0.190 | 67% | 19.0 |" in text
    assert table.closed_loop_gap_final.tolist() == pytest.approx([0.19, 0.19])


def test_heldout_trend_fits_the_last_iterations_of_pretraining_on_a_log_scale():
    from pwm.experiments.markdown import _trend
    from pwm.experiments.runs import heldout_trend

    iterations = np.arange(99, 10_000, 100)
    falling = 0.2 * 0.9 ** (iterations / 1000)  # 10% less per 1,000 iterations, throughout
    rows = pd.DataFrame({"iteration": iterations, "wm_eval/heldout_error": falling})
    logged = pd.DataFrame({"iteration": iterations - 50, "wm_eval/heldout_error": np.nan})  # rows of other metrics
    assert heldout_trend(pd.concat([rows, logged]).sort_values("iteration")) == pytest.approx(-0.10, abs=1e-9)
    # steep at first, flat over the last 2,000 iterations: only the end counts
    late_flat = np.where(iterations < 7_900, 5.0 * 0.5 ** (iterations / 1000), 5.0 * 0.5 ** 7.9)
    assert heldout_trend(rows.assign(**{"wm_eval/heldout_error": late_flat})) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(heldout_trend(rows.tail(2))) and math.isnan(heldout_trend(None))
    assert _trend(pd.Series([-0.1, -0.3, np.nan])) == "-20% [-30, -10]"


def test_a_runs_evaluations_are_the_mean_over_its_policies(tmp_path):
    """A run's further policies (policy<k> folders, train.policy_seeds) are attached to it, not read as runs of
    their own, and each evaluation's reward is the mean over the policies evaluated at that iteration."""
    from pwm.experiments.budget import budget_points

    run = tmp_path / "runs" / "cup-catch" / "default" / "baseline" / "seed0"
    summary = {"task": "cup-catch", "setting": "default", "variant": "baseline", "seed": 0, "iterations": 4,
               "pretrain_iterations": 8, "pretrain_heldout_error_final": 0.5, "final_reward": 200.0}
    for folder, rewards, index in ((run, (100.0, 200.0), 0), (run / "policy1", (300.0, 600.0), 1),
                                   (run / "policy2", (500.0, 100.0), 2)):
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({**summary, "policy_index": index}))
        pd.DataFrame({"iteration": [1, 3], "time/train_elapsed_s": [1.0, 2.0],
                      "eval/episode_reward": rewards}).to_csv(folder / "metrics.csv", index=False)
    runs = load_runs(tmp_path / "runs")
    assert len(runs) == 1 and runs[0].policy_count == 3
    assert runs[0].evals["eval/episode_reward"].tolist() == [300.0, 300.0]  # (100+300+500)/3, (200+600+100)/3
    table = run_table(runs, final_evals=1)
    assert table.final_reward.tolist() == [300.0] and table.policies.tolist() == [3]
    assert table.policy_rewards.tolist() == ["200; 600; 100"]  # each policy's own final, the first one first
    from pwm.experiments.markdown import _spread_sources

    rows = [line for line in _spread_sources(table) if line.startswith("| cup-catch")]
    policy_std = math.sqrt((100**2 + 300**2 + 200**2) / 2)
    assert rows == [f"| cup-catch | default | baseline | 1 | 200 / 600 / 100 | n/a | {policy_std:.1f} | n/a | n/a |"]
    assert _spread_sources(table.assign(policy_rewards="200")) == []  # one policy per run: nothing to split
    assert budget_points(tmp_path / "runs", final_evals=1).final_reward.tolist() == [300.0]
    (run / "policy2" / "summary.json").unlink()  # an unfinished policy is not averaged in yet
    assert load_runs(tmp_path / "runs")[0].evals["eval/episode_reward"].tolist() == [200.0, 400.0]
    # archived and restored over an interrupted attempt at the run, the finished further policy comes back too
    from pwm.experiments.archive import restore, save

    assert save(tmp_path, tmp_path / "archive") == 2
    fresh = tmp_path / "fresh" / "runs" / run.relative_to(tmp_path / "runs")
    (fresh / "pretrain").mkdir(parents=True)
    (fresh / "metrics.csv").write_text("iteration\n0\n")
    (fresh / "pretrain" / "checkpoint.pt").write_text("hours of pretraining")
    assert restore(tmp_path / "archive", tmp_path / "fresh") == 2
    assert load_runs(tmp_path / "fresh" / "runs")[0].evals["eval/episode_reward"].tolist() == [200.0, 400.0]
    # the attempt is moved out of runs/, not deleted: its world model's checkpoint is kept
    (moved,) = (tmp_path / "fresh" / "superseded").rglob("checkpoint.pt")
    assert moved.read_text() == "hours of pretraining" and moved.parent.parent.name.startswith("seed0-")
    assert not (fresh / "pretrain" / "checkpoint.pt").exists() and not (fresh / "metrics.csv").exists()
