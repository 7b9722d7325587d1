"""The report's figures: reward curves (per iteration and per wall-clock second), diagnostics, aggregate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pwm.experiments.runs import Run  # noqa: E402
from pwm.experiments.statistics import REWARD  # noqa: E402
from pwm.utils.common import atomic_savefig  # noqa: E402


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
    atomic_savefig(fig, path, dpi=110)
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
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_aggregate(aggregates: dict[str, dict[str, Any]], path: Path) -> Path:
    """IQM of the normalised final reward per comparison, at equal wall-clock (left) and equal iterations."""
    names = list(aggregates)
    panels = [(key, title) for key, title in (("iqm_wall", "equal wall-clock"), ("iqm", "equal iterations"))
              if any(key in aggregates[name] for name in names)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.9 + 0.8 * len(names)), squeeze=False,
                             sharey=True)
    for ax, (key, title) in zip(axes[0], panels):
        for row, name in enumerate(names):
            for offset, (variant, color) in enumerate((("baseline", "tab:blue"), ("flow", "tab:orange"))):
                if key not in aggregates[name]:
                    continue
                est = aggregates[name][key][variant]
                y = row + 0.18 * (offset * 2 - 1)
                ax.errorbar(est["iqm"], y, xerr=[[est["iqm"] - est["ci_low"]], [est["ci_high"] - est["iqm"]]],
                            fmt="o", color=color, capsize=4, label=variant if row == 0 else None)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("IQM of normalised final reward (95% CI)")
        ax.grid(alpha=0.3)
    axes[0][0].invert_yaxis()  # the report's order from the top, its main comparison first (shared by the panels)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
