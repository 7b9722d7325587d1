"""Published numbers to put our results next to, and TD-MPC2's normalised score.

The CSVs are the released results in ``benchmarks/reference/`` (copied from the project's shared
reference folder; its README names the sources): PWM's MT30/MT80 per-task policy results and
TD-MPC2's single-task learning curves (3 seeds, state observations).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from pwm.envs.tasks import task_family

#: ``benchmarks/reference`` of a source checkout (the default of ``reference_dir`` settings).
DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "reference"


def normalized_score(task: str, reward: float, success: float) -> float:
    """TD-MPC2's normalised score of one task: DMC episode reward / 10, Meta-World success rate x 100
    (both in [0, 100]); NaN for tasks outside those suites (gymnasium locomotion)."""
    family = task_family(task)
    if family == "dmc":
        return reward / 10.0
    if family == "metaworld":
        return success * 100.0
    return math.nan


def pwm_published(task_set_name: str, reference_dir: str | Path = DEFAULT_REFERENCE_DIR) -> dict[str, float]:
    """PWM's published per-task episode reward on ``mt30`` or ``mt80`` (empty if the file is absent)."""
    path = Path(reference_dir) / f"pwm_published_{task_set_name}.csv"
    if not path.exists():
        return {}
    frame = pd.read_csv(path)
    return dict(zip(frame.task, frame.episode_reward.astype(float)))


def tdmpc2_curves(reference_dir: str | Path = DEFAULT_REFERENCE_DIR) -> dict[str, pd.DataFrame]:
    """Per task, TD-MPC2's released reward curve: columns ``env_step, mean, min, max`` over its seeds."""
    path = Path(reference_dir) / "tdmpc2_published_curves.csv"
    if not path.exists():
        return {}
    frame = pd.read_csv(path)
    frame = frame[frame.metric == "reward"]
    curves = frame.groupby(["task", "env_step"]).value.agg(["mean", "min", "max"]).reset_index()
    return {task: group.sort_values("env_step").reset_index(drop=True) for task, group in curves.groupby("task")}


def tdmpc2_final(reference_dir: str | Path = DEFAULT_REFERENCE_DIR) -> dict[str, tuple[int, float]]:
    """Per task, (last published step, TD-MPC2's mean reward there)."""
    return {task: (int(curve.env_step.iloc[-1]), float(curve["mean"].iloc[-1]))
            for task, curve in tdmpc2_curves(reference_dir).items()}
