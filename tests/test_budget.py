"""Held-out error and reward against the pretraining budget, over a study's caps (pwm.experiments.budget)."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO
from pwm.experiments.budget import budget_points, doubling_changes, plot_budget


def write_run(folder, cap, error, half_error, rewards, task="cup-catch", variant="baseline", seed=0, data=None):
    """An archived A/B run: its summary (cap and half-budget check, optionally its data's fingerprint) and its
    evaluations."""
    run = folder / "runs" / task / "default" / variant / f"seed{seed}"
    run.mkdir(parents=True)
    summary = {"task": task, "setting": "default", "variant": variant, "seed": seed,
               "pretrain_iterations": cap, "pretrain_heldout_error_final": error,
               **({"data_sha256": data} if data else {})}
    if half_error is not None:
        summary.update(pretrain_half_iterations=cap // 2, pretrain_half_heldout_error_final=half_error)
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [{"iteration": 10 * i + 9, "eval/episode_reward": reward} for i, reward in enumerate(rewards)]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)


@pytest.mark.parametrize("old_cap", ["budget_8", "z_budget_8"])  # read before or after the next cap's check
def test_every_budget_of_every_cap_once_with_its_runs_reward(tmp_path, old_cap):
    write_run(tmp_path / old_cap, 8, error=0.5, half_error=0.8, rewards=[100, 200, 300, 400])
    write_run(tmp_path / "current", 16, error=0.45, half_error=0.5, rewards=[10, 20, 30, 90])  # 8 = the check
    write_run(tmp_path / "current", 16, error=0.2, half_error=None, rewards=[5], seed=1)
    points = budget_points(tmp_path)
    seed0 = points[points.seed == 0]
    assert seed0.pretrain_iterations.tolist() == [4, 8, 16]
    assert seed0.heldout_error.tolist() == [0.8, 0.5, 0.45]
    assert math.isnan(seed0.final_reward.iloc[0])  # a check extracts no policy
    assert seed0.final_reward.iloc[1:].tolist() == [300.0, pytest.approx(140 / 3)]  # mean of the last 3
    assert points[points.seed == 1][["pretrain_iterations", "final_reward"]].values.tolist() == [[16, 5.0]]
    assert plot_budget(points, tmp_path / "budget.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no runs of setting 'horizon=10'"):
        plot_budget(points, tmp_path / "none.png", setting="horizon=10")


def test_two_folders_that_disagree_on_a_budget_are_named(tmp_path):
    write_run(tmp_path / "budget_8", 8, error=0.5, half_error=0.8, rewards=[1])
    write_run(tmp_path / "current", 16, error=0.4, half_error=0.55, rewards=[1])  # its check is not that run
    with pytest.raises(ValueError, match=r"budget_8.*and .*current.*disagree on the held-out error of cup-catch "
                                         r"baseline seed 0 \(data unrecorded\) at 8 iterations \(0.5 vs 0.55\)"):
        budget_points(tmp_path)


def test_runs_on_other_data_are_other_world_models_kept_apart(tmp_path):
    """A study restarted on portable data holds a budget twice, on two datasets: both are kept, each under
    its data's fingerprint; two folders on one dataset must still agree."""
    write_run(tmp_path / "xeon_data", 8, error=0.5, half_error=0.8, rewards=[1])
    write_run(tmp_path / "current", 8, error=0.3, half_error=0.6, rewards=[2], data="ab" * 32)
    points = budget_points(tmp_path)
    assert points[["data", "pretrain_iterations", "heldout_error"]].values.tolist() == [
        ["abababababab", 4, 0.6], ["abababababab", 8, 0.3], ["unrecorded", 4, 0.8], ["unrecorded", 8, 0.5]]
    assert plot_budget(points, tmp_path / "budget.png").read_bytes()[:4] == b"\x89PNG"
    write_run(tmp_path / "current_16", 16, error=0.2, half_error=0.35, rewards=[3], data="ab" * 32)
    with pytest.raises(ValueError, match=r"cup-catch baseline seed 0 \(data abababababab\) at 8 iterations"):
        budget_points(tmp_path)


def test_the_command_writes_the_table_and_the_figure(tmp_path):
    write_run(tmp_path / "runs_a", 8, error=0.5, half_error=0.8, rewards=[1, 2, 3])
    result = subprocess.run([sys.executable, "-m", "pwm.experiments.budget", str(tmp_path), "--out",
                             str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "out" / "budget.csv")
    assert table.pretrain_iterations.tolist() == [4, 8] and "source" not in table
    assert (tmp_path / "out" / "budget.png").stat().st_size > 0
    empty = subprocess.run([sys.executable, "-m", "pwm.experiments.budget", str(tmp_path / "out")], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode != 0 and "no run summaries under" in empty.stderr


def test_a_doubling_changes_over_the_seeds_run_at_both_budgets():
    """Seed 0 ran 10k, 20k and 40k; seeds 1-2 only 20k: each doubling compares seed 0 alone (the later seeds'
    errors would make 20k -> 40k look flat), and a budget without its double gives nothing."""
    rows = pd.DataFrame({"seed": [0, 0, 0, 1, 2], "pretrain_iterations": [10000, 20000, 40000, 20000, 20000],
                         "heldout_error": [0.1, 0.05, 0.08, 0.11, 0.09]})
    changes = doubling_changes(rows)
    assert changes.keys() == {(10000, 20000), (20000, 40000)}
    assert changes[(10000, 20000)] == pytest.approx(-0.5) and changes[(20000, 40000)] == pytest.approx(0.6)
    assert doubling_changes(rows[rows.pretrain_iterations != 20000]) == {}
