"""A/B run folders as tables: what :mod:`pwm.experiments.ab` wrote (``summary.json``, ``metrics.csv``,
``pretrain/metrics.csv``), one :class:`Run` each, and one row per run (:func:`run_table`)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pwm.experiments.statistics import REWARD, coefficient_of_variation, final_reward


#: The folder, inside a run's, of the ``k``-th further policy extracted from the run's world model
#: (``train.policy_seeds``): ``policy1``, ``policy2``, ...
POLICY_FOLDER = "policy{index}"
_POLICY_FOLDER = re.compile(r"policy(\d+)")


@dataclass
class Run:
    """One finished (or partial) A/B run: a world model and the policies extracted from it.

    ``metrics``: the first policy's log (its H1 diagnostics are the run's); ``policies``: the logs of the
    further finished policies of the same world model (``train.policy_seeds`` > 1), evaluated on the same
    initial states.
    """

    path: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame
    pretrain: pd.DataFrame | None
    policies: list[pd.DataFrame] = field(default_factory=list)

    @property
    def evals(self) -> pd.DataFrame:
        """Evaluation rows with the total wall-clock (pretraining + policy training) ``wall_s``. With further
        policies, ``eval/episode_reward`` at each evaluation is the mean over the policies evaluated at that
        iteration: the world model's expected policy, not one policy seed's draw."""
        rows = policy_mean_evals(self.metrics, self.policies)
        rows["wall_s"] = rows["time/train_elapsed_s"] + float(self.summary.get("pretrain_elapsed_s", 0.0))
        return rows

    @property
    def policy_count(self) -> int:
        return 1 + len(self.policies)

    def policy_final_rewards(self, final_evals: int) -> list[float]:
        """Each policy's own final reward (mean of its last ``final_evals`` evaluations), the first one first."""
        return [final_reward(_eval_rows(frame), final_evals) for frame in [self.metrics, *self.policies]]


def _eval_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics[REWARD].notna()] if REWARD in metrics else metrics.iloc[:0]


def policy_mean_evals(metrics: pd.DataFrame, policies: list[pd.DataFrame]) -> pd.DataFrame:
    """The evaluation rows of a run's first policy (``metrics``), ``eval/episode_reward`` replaced by the mean
    over it and its further ``policies`` evaluated at the same iteration."""
    rows = _eval_rows(metrics).copy()
    if policies:
        rewards = pd.concat([_eval_rows(frame).set_index("iteration")[REWARD] for frame in [metrics, *policies]],
                            axis=1)
        rows[REWARD] = rewards.mean(axis=1).reindex(rows["iteration"]).to_numpy()
    return rows


def policy_index(run_dir: Path, summary: dict[str, Any]) -> int:
    """0 for a run's first policy (the run's own folder), ``k`` for its ``policy<k>`` folder."""
    match = _POLICY_FOLDER.fullmatch(run_dir.name)
    return int(summary.get("policy_index", match.group(1) if match else 0))


def select_runs(runs: list[Run], task: str, setting: str, variants: tuple[str, ...] | None = None) -> list[Run]:
    """The runs of one task and setting (and, if given, of these variants)."""
    return [r for r in runs if r.summary["task"] == task and r.summary.get("setting", "default") == setting
            and (variants is None or r.summary["variant"] in variants)]


def metrics_file(path: Path) -> Path | None:
    """``path`` or its gzipped twin (archived runs, :mod:`pwm.experiments.archive`), whichever exists."""
    gzipped = path.with_name(path.name + ".gz")
    return path if path.exists() else gzipped if gzipped.exists() else None


def load_runs(root: str | Path) -> list[Run]:
    """Every run under ``root`` that has a ``summary.json`` and a ``metrics.csv`` (or ``metrics.csv.gz``), with
    the finished further policies of its world model (``policy<k>`` folders) attached to it."""
    runs = []
    for summary_path in sorted(Path(root).rglob("summary.json")):
        metrics_path = metrics_file(summary_path.parent / "metrics.csv")
        if metrics_path is None:
            continue
        summary = json.loads(summary_path.read_text())
        if policy_index(summary_path.parent, summary) > 0:
            continue  # read with its run
        pretrain_path = metrics_file(summary_path.parent / "pretrain" / "metrics.csv")
        runs.append(Run(summary_path.parent, summary, pd.read_csv(metrics_path),
                        pd.read_csv(pretrain_path) if pretrain_path is not None else None,
                        further_policy_logs(summary_path.parent)))
    return runs


def further_policy_logs(run_dir: Path) -> list[pd.DataFrame]:
    """The logs of the finished further policies (``policy<k>`` folders with a ``summary.json``) of a run."""
    found = [metrics_file(path.parent / "metrics.csv") for path in sorted(run_dir.glob("policy*/summary.json"))
             if policy_index(path.parent, json.loads(path.read_text())) > 0]
    return [pd.read_csv(path) for path in found if path is not None]


def _logged(frame: pd.DataFrame | None, column: str) -> pd.Series:
    """The logged (non-NaN) values of ``column``; empty when the run did not log it."""
    if frame is None or column not in frame:
        return pd.Series(dtype=float)
    return frame[column].dropna()


def _column_stat(frame: pd.DataFrame | None, column: str, how: str) -> float:
    values = _logged(frame, column)
    return float(getattr(values, how)()) if len(values) else float("nan")


def _last_mean(frame: pd.DataFrame | None, column: str, count: int) -> float:
    """Mean of the last ``count`` logged values of ``column`` (the final evaluations)."""
    values = _logged(frame, column)
    return float(values.tail(max(1, count)).mean()) if len(values) else float("nan")


def _tail_mean(frame: pd.DataFrame | None, column: str, share: float = 0.1) -> float:
    """Mean of the last ``share`` of ``column``'s logged values (the end of training)."""
    values = _logged(frame, column)
    return float(values.tail(max(1, int(len(values) * share))).mean()) if len(values) else float("nan")


HELDOUT_COLUMNS = {"heldout_latent_nmse_1": "wm_eval/latent_nmse_1", "heldout_latent_nmse_H": "wm_eval/latent_nmse_H",
                   "heldout_reward_corr": "wm_eval/reward_corr_rollout",
                   "heldout_reward_nmse": "wm_eval/reward_nmse_rollout",
                   "heldout_latent_spread": "wm_eval/latent_spread",
                   "heldout_latent_vs_copy_1": "wm_eval/latent_vs_copy_1", "heldout_copy_nmse_1": "wm_eval/copy_nmse_1"}


def _heldout_evaluations(pretrain: pd.DataFrame | None) -> pd.DataFrame:
    """The pretraining metrics rows of held-out evaluations (``wm_eval/heldout_error`` set); may be empty."""
    if pretrain is None or "wm_eval/heldout_error" not in pretrain:
        return pd.DataFrame({"iteration": [], "wm_eval/heldout_error": []})
    return pretrain[pretrain["wm_eval/heldout_error"].notna()]


def _best_heldout(pretrain: pd.DataFrame | None) -> dict[str, float]:
    """Held-out diagnostics of the pretraining evaluation with the lowest ``heldout_error`` (the
    weights pretraining kept), and ``first_latent_spread``, the latent spread at the first evaluation
    (against the kept one's: a representation that shrinks while it trains)."""
    names = [*HELDOUT_COLUMNS, "first_latent_spread"]
    evaluations = _heldout_evaluations(pretrain)
    if evaluations.empty:
        return {name: math.nan for name in names}
    best = evaluations.loc[evaluations["wm_eval/heldout_error"].idxmin()]
    scores = {name: float(best.get(column, math.nan)) for name, column in HELDOUT_COLUMNS.items()}
    scores["first_latent_spread"] = float(evaluations.iloc[0].get("wm_eval/latent_spread", math.nan))
    return scores


#: Span of the last pretraining iterations over which :func:`heldout_trend` fits the held-out error.
HELDOUT_TREND_ITERATIONS = 2_000


def heldout_trend(pretrain: pd.DataFrame | None, span: int = HELDOUT_TREND_ITERATIONS) -> float:
    """Relative change of the held-out error per 1,000 iterations at the end of pretraining: a
    least-squares line through ``log(wm_eval/heldout_error)`` against the iteration, over the evaluations
    of the last ``span`` iterations; -0.10 = still falling by 10% per 1,000 iterations.

    Why: the plateau rule's converged flag compares window means with a threshold once, at the end, and
    on a held-out error that moves by tens of per cent between evaluations; a fitted slope over 20
    evaluations says how fast the error was still falling. NaN with fewer than 3 evaluations in the span
    or a non-positive error.
    """
    evaluations = _heldout_evaluations(pretrain)
    evaluations = evaluations[evaluations["iteration"] >= evaluations["iteration"].max() - span]
    errors = evaluations["wm_eval/heldout_error"].to_numpy(dtype=float)
    if len(errors) < 3 or not (errors > 0).all():
        return math.nan
    slope = np.polyfit(evaluations["iteration"].to_numpy(dtype=float) / 1000.0, np.log(errors), 1)[0]
    return float(math.expm1(slope))


def _half_budget(summary: dict[str, Any]) -> dict[str, float]:
    """The held-out error where pretraining ended (mean of its last evaluations), the same at half the cap
    (runs that made :func:`pwm.experiments.ab.pretrain_half_budget`'s check; else NaN) and
    ``half_budget_drop``, the relative drop from the second to the first: what doubling the budget bought."""
    final = float(summary.get("pretrain_heldout_error_final", math.nan))
    half = float(summary.get("pretrain_half_heldout_error_final", math.nan))
    return {"heldout_error_final": final, "half_budget_heldout_error_final": half,
            "half_budget_drop": (half - final) / half if half > 0 else math.nan}


def model_size(summary: dict[str, Any]) -> str:
    """A run's network sizes, e.g. ``latent64-wm128x128-actor128x128`` (only runs of one size are compared)."""
    alg = summary.get("alg") or {}
    wm, actor = alg.get("world_model_config") or {}, alg.get("actor_config") or {}
    if not wm:
        return "unknown"
    units = "x".join(str(u) for u in wm.get("units", []))
    return f"latent{wm.get('latent_dim')}-wm{units}-actor{'x'.join(str(u) for u in actor.get('units', []))}"


#: What a run that did not record its dataset's fingerprint or its CPU (from before they were recorded) shows.
UNRECORDED = "unrecorded"


def data_label(data_sha256: Any) -> str:
    """A run's dataset as budgets and figures key it: the fingerprint's first 12 hex digits, or :data:`UNRECORDED`."""
    return (data_sha256 if isinstance(data_sha256, str) and data_sha256 else UNRECORDED)[:12]


def pretraining_setting(setting: str) -> str:
    """The setting whose world models a run of ``setting`` pretrains: ``setting`` (a Hydra override_dirname,
    ``key=value`` items joined by commas) without its ``train.*`` items, which act only after pretraining
    (policy extraction), or ``default`` when none is left. ``train.train_world_model=True`` pretrains the default
    setting's world models (same seed, data and batches); ``alg.horizon=10`` pretrains its own."""
    items = re.split(r",(?=[\w.+~-]+=)", setting) if setting and setting != "default" else []
    kept = [item for item in items if not item.startswith("train.")]
    return ",".join(kept) if kept else "default"


#: Separator of a run's policies' final rewards in its ``policy_rewards`` cell (one CSV column, readable as is).
POLICY_REWARDS_SEPARATOR = "; "


def format_policy_rewards(rewards: list[float]) -> str:
    """``"455.2; 627.1; 415"``: the ``policy_rewards`` cell of :func:`run_table` (first policy first)."""
    return POLICY_REWARDS_SEPARATOR.join(f"{reward:.6g}" for reward in rewards)


def parse_policy_rewards(cell: Any) -> np.ndarray:
    """The final rewards of a ``policy_rewards`` cell ``[policies]``; empty for a missing cell (older tables)."""
    if not isinstance(cell, str) or not cell.strip():
        return np.array([], dtype=float)
    return np.array([float(part) for part in cell.split(POLICY_REWARDS_SEPARATOR.strip())], dtype=float)


def run_table(runs: list[Run], final_evals: int = 1) -> pd.DataFrame:
    """One row per run: identity, outcome (``final_reward``: mean of the last ``final_evals``
    evaluations, averaged over the run's policies; ``policy_rewards``: each policy's own, see
    :func:`parse_policy_rewards`; ``last_reward``: the last one), cost and stability statistics (``value_bias_final``:
    the critic's mean overvaluation of real returns on the last ``final_evals`` evaluations)."""
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
            "policies": run.policy_count,  # final_reward's mean is over these policies of one world model
            "policy_rewards": format_policy_rewards(run.policy_final_rewards(final_evals)),
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
            "value_latent_grad_mean": _column_stat(m, "critic/value_latent_grad", "mean"),
            "value_model_gap_mean": _column_stat(m, "critic/value_model_gap", "mean"),
            "value_bias_final": _last_mean(m, "critic_eval/value_bias", final_evals),
            "imagined_reward_per_step": _tail_mean(m, "actor/predicted_reward"),
            "closed_loop_gap_final": _last_mean(m, "wm_eval/imagined_policy_gap", final_evals),
            "saturated_fraction": _tail_mean(m, "actor/saturated_fraction"),
            "real_reward_per_step": final_reward(run.evals, final_evals) / _column_stat(m, "eval/episode_length", "mean"),
            "latent_norm_max": _column_stat(m, "rollout/latent_norm_max", "max"),
            "latent_norm_mean": _column_stat(m, "rollout/latent_norm_mean", "mean"),
            "nonfinite_latents": _column_stat(m, "rollout/nonfinite_latents", "sum"),
            "wm_update_s": _column_stat(run.pretrain, "time/wm_update_s", "mean"),
            "actor_update_s": _column_stat(m, "time/actor_update_s", "mean"),
            "random_reward": float(s.get("random_reward", math.nan)),
            "random_reward_std": float(s.get("random_reward_std", math.nan)),
            "pretrain_iterations": float(s.get("pretrain_iterations", math.nan)),
            "pretrain_converged": s.get("pretrain_converged"),
            "heldout_trend_per_1k": heldout_trend(run.pretrain),
            **_half_budget(s),
            "commit": s.get("commit"),
            "cpu": s.get("cpu"),
            "data_sha256": s.get("data_sha256"),
            **_best_heldout(run.pretrain),
            "dynamics_loss_final": _column_stat(run.pretrain.tail(1) if run.pretrain is not None else None,
                                                "wm/dynamics_loss", "mean"),
            "reward_loss_final": _column_stat(run.pretrain.tail(1) if run.pretrain is not None else None,
                                              "wm/reward_loss", "mean"),
        })
    return pd.DataFrame(rows)
