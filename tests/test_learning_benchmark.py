"""The learning benchmark's bookkeeping: fresh runs merge into the committed results run by run."""

import argparse
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "learning.py"


@pytest.fixture(scope="module")
def learning():
    spec = importlib.util.spec_from_file_location("learning_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(root: Path, task: str, variant: str, seed: int, rewards: list[float], elapsed_s=None,
               commits=()):
    run_dir = root / task / variant / f"seed{seed}"
    run_dir.mkdir(parents=True)
    steps = [5000 * (i + 1) for i in range(len(rewards))]
    pd.DataFrame({"train/env_steps": steps, "eval/episode_reward": rewards}).to_csv(run_dir / "metrics.csv",
                                                                                     index=False)
    if elapsed_s is not None:
        (run_dir / "summary.json").write_text(json.dumps({"elapsed_s": elapsed_s}))
    if commits:
        (run_dir / "commits.txt").write_text("".join(f"{c}\n" for c in commits))


def test_a_fresh_run_replaces_its_committed_rows_and_the_others_stay(learning, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    # committed: cup-catch baseline (2 evaluations) and an unfinished cup-catch sac run (1 evaluation)
    pd.DataFrame({"task": ["cup-catch"] * 3, "variant": ["baseline", "baseline", "sac"], "seed": [0, 0, 0],
                  "env_steps": [5000, 10000, 5000], "eval_reward": [10.0, 20.0, 1.0],
                  "tdmpc2_reward_at_same_steps": [5.0, 6.0, 5.0]}).to_csv(out / "learning.csv", index=False)
    pd.DataFrame({"task": ["cup-catch", "cup-catch"], "variant": ["baseline", "sac"], "seed": [0, 0],
                  "minutes": [33.0, None], "commit": ["aaa", "bbb"]}).to_csv(out / "learning_runs.csv", index=False)
    # the sac run is finished now, resumed on another commit
    _write_run(runs, "cup-catch", "sac", 0, [100.0, 500.0, 900.0], elapsed_s=1800.0, commits=("bbb", "ccc", "ccc"))
    args = argparse.Namespace(runs_dir=str(runs))

    curves = learning.merge_with_committed(learning.collect_results(args), out / "learning.csv")
    assert list(curves.columns) == learning.CURVE_COLUMNS
    sac = curves[curves.variant == "sac"]
    assert sac.eval_reward.tolist() == [100.0, 500.0, 900.0] and sac.env_steps.tolist() == [5000, 10000, 15000]
    assert curves[curves.variant == "baseline"].eval_reward.tolist() == [10.0, 20.0]

    table = learning.merge_with_committed(learning.collect_runs(args), out / "learning_runs.csv")
    by_variant = table.set_index("variant")
    assert by_variant.loc["sac", "minutes"] == 30.0 and by_variant.loc["sac", "commit"] == "bbb+ccc"
    assert by_variant.loc["baseline", "minutes"] == 33.0 and by_variant.loc["baseline", "commit"] == "aaa"


def test_an_unfinished_run_has_no_minutes_and_an_unknown_commit(learning, tmp_path):
    _write_run(tmp_path, "reacher-easy", "flow", 1, [3.0])
    table = learning.collect_runs(argparse.Namespace(runs_dir=str(tmp_path)))
    assert table.seed.tolist() == [1] and table.minutes.isna().all() and table.commit.tolist() == ["unknown"]


def test_a_committed_file_of_another_format_is_an_error_naming_the_columns(learning, tmp_path):
    (tmp_path / "learning.csv").write_text("task,variant,seed,env_steps\ncup-catch,sac,0,5000\n")
    fresh = pd.DataFrame(columns=learning.CURVE_COLUMNS)
    with pytest.raises(ValueError, match=r"learning.csv lacks the columns \['eval_reward', 'tdmpc2_reward"):
        learning.merge_with_committed(fresh, tmp_path / "learning.csv")
