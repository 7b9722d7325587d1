"""Learning benchmark: do the agents learn? Single-task online PWM (both dynamics variants) and SAC.

    python benchmarks/learning.py                                   # the committed run (see results/learning.md)
    python benchmarks/learning.py --tasks cartpole-balance --seeds 0 1 --variants baseline
    python benchmarks/learning.py --report-only                     # rebuild csv / md / png from finished runs

Every (task, variant, seed) is one process with one torch thread; ``--jobs`` of them run at once.
Runs live in ``--runs-dir`` and resume when the command is re-run (PWM from its checkpoint; an
unfinished SAC run starts over). Results go to ``--out``:

* ``learning.csv``: task, variant, seed, env_steps, eval_reward, tdmpc2_reward_at_same_steps
* ``learning_runs.csv``: per run its minutes and the commit it ran on
* ``learning.md``: reward at fixed budgets next to TD-MPC2's published curve and the targets
* ``learning.png``: the curves

TD-MPC2's numbers are its released learning curves (``../shared/reference``, copied to
``benchmarks/reference``), published every 100k steps and linearly interpolated in between.
SAC is stable-baselines3's (a pinned dependency) with its default hyperparameters.

Results already in ``--out`` are merged, not replaced: a (task, variant, seed) with a run under
``--runs-dir`` takes that run's numbers, every other one keeps its committed rows. So a benchmark can
be completed run by run, over several sittings or machines (``--fresh`` drops the committed rows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from pwm.utils.common import atomic_savefig, die_with_parent

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "benchmarks" / "reference" / "tdmpc2_published_curves.csv"
TASKS = ["cartpole-balance", "reacher-easy", "cup-catch", "pendulum-swingup", "walker-walk"]
#: The issue's bar for the baseline within 100k environment steps.
TARGETS = {"cartpole-balance": 900.0, "reacher-easy": 700.0, "cup-catch": 700.0}
@dataclass(frozen=True)
class Variant:
    """A learning-benchmark agent: the dynamics it uses, its overrides on top of the configs, how the report shows it."""

    dynamics: str  # "baseline" (``alg=<alg>``) or "flow" (``alg=<alg>_flow``)
    overrides: tuple[str, ...] = ()  # Hydra overrides on top of the alg's defaults
    note: str = ""  # what the overrides mean, for the markdown's legend
    color: str = "black"  # its curves in learning.png

    def __post_init__(self) -> None:
        if self.dynamics not in ("baseline", "flow"):
            raise ValueError(f"Variant.dynamics must be 'baseline' or 'flow', got {self.dynamics!r}")

    def alg(self, size: str) -> str:
        return size if self.dynamics == "baseline" else f"{size}_flow"


#: Every variant but ``baseline`` and ``flow`` (the configs' defaults) names the defaults of the day its committed
#: results were run, so each name keeps its meaning: the -fixed-alpha twins are today's defaults with the entropy
#: bonus's weight fixed at its start (0.1; the defaults from 2026-12-02 until the weight was tuned); the -pwm,
#: -entropy, -normalized and -simplex-detached ones start from PWM's objective (``+objective=pwm``: no entropy
#: bonus, no data critic, the spec's dynamics loss) and add their knobs; the rest start from today's defaults.
#: flow-simplex-detached is the flow model with both knobs of results/study_pwm_objective/followups (simplex
#: projection, no gradient through the flow-matching target); the -entropy twins add an entropy bonus to the actor's
#: objective, which keeps its tanh out of saturation (see PWM's actor_entropy_coef). flow-simplex is today's flow
#: with its integrated latents projected onto SimNorm's simplices, the set the baseline's dynamics head and the
#: encoder map into. The -h5 twins use 5-step imagined rollouts (PWM's H is 16): on walker-walk the policy exploited
#: its model along 16-step rollouts (learning_notes.md); -updates150 makes 3x the updates per episode. The -motion
#: twins divide the dynamics loss by how far the encoder's latent moved in a window's first step, not the latent
#: variance (world_model_config.dynamics_loss_normalizer): on walker-walk flow's latents stopped moving
#: (learning_notes.md). The -normalized twins divide the dynamics loss by the latent variance
#: (world_model_config.normalize_dynamics_loss).
PWM_OBJECTIVE = "+objective=pwm"
FIXED_ALPHA = "alg.actor_entropy_target=null"
ENTROPY_BONUS = "alg.actor_entropy_coef=0.01"
NORMALIZED_DYNAMICS = "alg.world_model_config.normalize_dynamics_loss=true"
SIMPLEX = "alg.world_model_config.latent_projection=simplex"
SIMPLEX_DETACHED = (SIMPLEX, "alg.world_model_config.detach_velocity_target=true")
SHORT_HORIZON = "alg.horizon=5"
MORE_UPDATES = "train.updates_per_iteration=150"
MOTION_NORMALIZER = "alg.world_model_config.dynamics_loss_normalizer=motion"
FIELD_ONLY = ("alg.world_model_config.detach_flow_matching_latents=true",)
ENDPOINT_DETACHED = ("alg.world_model_config.endpoint_loss_coef=1.0", "alg.world_model_config.detach_velocity_target=true")
PWM_NOTE = "PWM's objective, the configs' defaults until 2026-12-02"
NORMALIZED_NOTE = "the dynamics loss in units of the latent variance, weighted by `alg.wm_normalized_dynamics_coef`"
FIXED_ALPHA_NOTE = ("the defaults with the entropy bonus's weight fixed at 0.1, not tuned to a target entropy; "
                    "the defaults from 2026-12-02 until it was tuned")
ENTROPY_NOTE = "an entropy bonus in the actor's objective; see `learning_notes.md`"
MOTION_NOTE = ("the defaults with the dynamics loss divided by how far the encoder's latent moved in a window's first step "
               "(`dynamics_loss_normalizer=motion`), not by the latent variance; see `learning_notes.md`")
ENDPOINT_NOTE = ("the defaults with the flow-matching target giving no gradient to the start latent "
                 "(`detach_velocity_target=true`) and the integrated next latent also fitted by the baseline's MSE "
                 "(`endpoint_loss_coef=1`); see `learning_notes.md`")
HORIZON_NOTE = ("the defaults with 5-step imagined rollouts instead of 16 (world-model windows too); "
                "see `learning_notes.md`")
FIELD_ONLY_NOTE = ("the defaults with the flow-matching loss training the velocity field alone, the encoder learning "
                   "from the reward loss (`detach_flow_matching_latents=true`); see `learning_notes.md`")
UPDATES_NOTE = "3x the updates per episode (150, 0.3 per step)"
#: In the table's and the plot's order.
PWM_VARIANTS = {
    "baseline": Variant("baseline", color="tab:blue"),
    "flow": Variant("flow", color="tab:orange"),
    "baseline-pwm": Variant("baseline", (PWM_OBJECTIVE,), PWM_NOTE, "navy"),
    "flow-pwm": Variant("flow", (PWM_OBJECTIVE,), PWM_NOTE, "goldenrod"),
    "flow-simplex-detached": Variant("flow", (PWM_OBJECTIVE, *SIMPLEX_DETACHED),
                                     "see `results/study_pwm_objective/followups/README.md`", "tab:red"),
    "baseline-entropy": Variant("baseline", (PWM_OBJECTIVE, ENTROPY_BONUS), ENTROPY_NOTE, "tab:cyan"),
    "flow-entropy": Variant("flow", (PWM_OBJECTIVE, ENTROPY_BONUS), ENTROPY_NOTE, "tab:brown"),
    "flow-simplex-detached-entropy": Variant(
        "flow", (PWM_OBJECTIVE, *SIMPLEX_DETACHED, ENTROPY_BONUS),
        "both follow-up knobs and the entropy bonus; see `learning_notes.md`", "tab:purple"),
    "baseline-normalized": Variant("baseline", (PWM_OBJECTIVE, NORMALIZED_DYNAMICS),
                                   f"{NORMALIZED_NOTE}; see `learning_notes.md`", "tab:olive"),
    "flow-normalized": Variant("flow", (PWM_OBJECTIVE, NORMALIZED_DYNAMICS),
                               f"{NORMALIZED_NOTE}; see `learning_notes.md`", "tab:pink"),
    "baseline-normalized-entropy": Variant("baseline", (PWM_OBJECTIVE, NORMALIZED_DYNAMICS, ENTROPY_BONUS),
                                           f"{NORMALIZED_NOTE}, and the entropy bonus", "tab:gray"),
    "flow-normalized-entropy": Variant("flow", (PWM_OBJECTIVE, NORMALIZED_DYNAMICS, ENTROPY_BONUS),
                                       f"{NORMALIZED_NOTE}, and the entropy bonus", "magenta"),
    "baseline-fixed-alpha": Variant("baseline", (FIXED_ALPHA,), FIXED_ALPHA_NOTE, "cornflowerblue"),
    "flow-fixed-alpha": Variant("flow", (FIXED_ALPHA,), FIXED_ALPHA_NOTE, "sandybrown"),
    "flow-simplex": Variant("flow", (SIMPLEX,),
                            "the defaults with each integrated latent projected onto SimNorm's simplices "
                            "(`flow.latent_projection=simplex`); see `learning_notes.md`", "crimson"),
    "baseline-h5": Variant("baseline", (SHORT_HORIZON,), HORIZON_NOTE, "darkblue"),
    "flow-h5": Variant("flow", (SHORT_HORIZON,), HORIZON_NOTE, "darkorange"),
    "baseline-h5-updates150": Variant("baseline", (SHORT_HORIZON, MORE_UPDATES), f"{HORIZON_NOTE}; and {UPDATES_NOTE}",
                                      "black"),
    "baseline-motion": Variant("baseline", (MOTION_NORMALIZER,), MOTION_NOTE, "teal"),
    "flow-motion": Variant("flow", (MOTION_NORMALIZER,), MOTION_NOTE, "orangered"),
    "baseline-h5-motion": Variant("baseline", (SHORT_HORIZON, MOTION_NORMALIZER),
                                  f"{MOTION_NOTE}; and 5-step imagined rollouts", "slategray"),
    "flow-h5-motion": Variant("flow", (SHORT_HORIZON, MOTION_NORMALIZER),
                              f"{MOTION_NOTE}; and 5-step imagined rollouts", "chocolate"),
    "flow-h5-updates150": Variant("flow", (SHORT_HORIZON, MORE_UPDATES), f"{HORIZON_NOTE}; and {UPDATES_NOTE}",
                                  "dimgray"),
    "flow-h5-endpoint-detached": Variant("flow", (SHORT_HORIZON, *ENDPOINT_DETACHED),
                                         f"{ENDPOINT_NOTE}; and 5-step imagined rollouts", "darkviolet"),
    "flow-endpoint-detached": Variant("flow", ENDPOINT_DETACHED, ENDPOINT_NOTE, "mediumorchid"),
    "baseline-updates150": Variant("baseline", (MORE_UPDATES,), f"the defaults with {UPDATES_NOTE}", "steelblue"),
    "flow-h5-endpoint-detached-updates150": Variant(
        "flow", (SHORT_HORIZON, *ENDPOINT_DETACHED, MORE_UPDATES),
        f"{ENDPOINT_NOTE}; and 5-step imagined rollouts and {UPDATES_NOTE}", "indigo"),
    "flow-fieldonly": Variant("flow", FIELD_ONLY, FIELD_ONLY_NOTE, "firebrick"),
    "flow-h5-fieldonly-updates150": Variant("flow", (SHORT_HORIZON, *FIELD_ONLY, MORE_UPDATES),
                                            f"{FIELD_ONLY_NOTE}; and 5-step imagined rollouts and {UPDATES_NOTE}",
                                            "darkred"),
}
SAC_COLOR = "tab:green"
VARIANTS = [*PWM_VARIANTS, "sac"]
RUN_KEY = ["task", "variant", "seed"]
CURVE_COLUMNS = [*RUN_KEY, "env_steps", "eval_reward", "tdmpc2_reward_at_same_steps"]
RUN_COLUMNS = [*RUN_KEY, "minutes", "commit"]
EPISODE_STEPS = 500  # DMC episodes: 1000 simulator steps at action repeat 2


def _run_dir(args: argparse.Namespace, task: str, variant: str, seed: int) -> Path:
    return Path(args.runs_dir) / task / variant / f"seed{seed}"


def run_pwm(args: argparse.Namespace, task: str, variant: str, seed: int) -> str:
    """One online PWM run through the user-facing script (resumes if a checkpoint exists)."""
    run_dir = _run_dir(args, task, variant, seed)
    seed_episodes = 5
    iterations = (args.steps - seed_episodes * EPISODE_STEPS) // EPISODE_STEPS
    command = [sys.executable, str(REPO / "scripts" / "train_singletask.py"), f"env={task}",
               f"alg={PWM_VARIANTS[variant].alg(args.alg)}", f"seed={seed}", f"general.run_dir={run_dir}",
               f"train.iterations={iterations}", f"train.seed_episodes={seed_episodes}",
               f"train.eval_every={args.eval_every // EPISODE_STEPS}", f"train.eval_episodes={args.eval_episodes}",
               "train.tensorboard=false", "threads=1", *PWM_VARIANTS[variant].overrides, *args.override]
    log = run_dir / "stdout.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        # The run stops with this worker (and the worker with the benchmark), not on in the background.
        result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=die_with_parent)
    if result.returncode != 0:
        raise RuntimeError(f"{task} {variant} seed {seed} failed; see {log}")
    return str(run_dir)


def run_sac(args: argparse.Namespace, task: str, seed: int) -> str:
    """One SAC run; writes metrics.csv and summary.json like a PWM run."""
    import torch

    from pwm.data.sac import train_sac
    from pwm.training.logger import RunLogger
    from pwm.utils.common import atomic_write_text

    torch.set_num_threads(1)
    run_dir = _run_dir(args, task, "sac", seed)
    logger = RunLogger(run_dir, tensorboard=False)
    start = time.perf_counter()

    def log(steps: int, metrics: dict[str, float]) -> None:
        logger.log(steps // args.eval_every, {"train/env_steps": float(steps), **metrics,
                                              "time/elapsed_s": time.perf_counter() - start})

    rows, _ = train_sac(task, seed, args.steps, args.eval_every, args.eval_episodes, on_evaluation=log)
    logger.close()
    summary = {"task": task, "variant": "sac", "seed": seed, "elapsed_s": time.perf_counter() - start,
               "final_reward": rows[-1]["eval/episode_reward"], "env_steps": args.steps}
    atomic_write_text(json.dumps(summary, indent=2), run_dir / "summary.json")
    return str(run_dir)


def _job(args: argparse.Namespace, task: str, variant: str, seed: int) -> str:
    from pwm.utils.common import git_commit

    run_dir = _run_dir(args, task, variant, seed)
    if (run_dir / "summary.json").exists():
        return f"{task} {variant} seed {seed}: already finished"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "commits.txt", "a") as handle:  # a resumed run may continue on another commit
        handle.write(f"{git_commit(REPO) or 'unknown'}\n")
    return run_sac(args, task, seed) if variant == "sac" else run_pwm(args, task, variant, seed)


# ---------------------------------------------------------------------- results
def tdmpc2_reference(path: Path = REFERENCE):
    """Per task: TD-MPC2's published curve (``env_step``, ``mean``/``min``/``max`` reward over its seeds)."""
    from pwm.experiments.published import tdmpc2_curves

    return tdmpc2_curves(path.parent)


def collect_results(args: argparse.Namespace):
    """One row per evaluation of every finished or running run, with TD-MPC2's reward at that step."""
    import numpy as np
    import pandas as pd

    reference = tdmpc2_reference()
    rows = []
    for metrics_path in sorted(Path(args.runs_dir).glob("*/*/seed*/metrics.csv")):
        task, variant, seed = metrics_path.parts[-4], metrics_path.parts[-3], int(metrics_path.parts[-2][4:])
        frame = pd.read_csv(metrics_path)
        if "eval/episode_reward" not in frame:  # a run that has not evaluated yet
            continue
        evals = frame[frame["eval/episode_reward"].notna()]
        curve = reference.get(task)
        for _, row in evals.iterrows():
            steps = float(row["train/env_steps"])
            ref = (float(np.interp(steps, curve.env_step, curve["mean"])) if curve is not None else math.nan)
            rows.append({"task": task, "variant": variant, "seed": seed, "env_steps": int(steps),
                         "eval_reward": round(float(row["eval/episode_reward"]), 2),
                         "tdmpc2_reward_at_same_steps": round(ref, 2)})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def collect_runs(args: argparse.Namespace):
    """One row per run under ``--runs-dir``: minutes (NaN while unfinished) and the commit it ran on."""
    import pandas as pd

    rows = []
    for run_dir in sorted(Path(args.runs_dir).glob("*/*/seed*")):
        if not (run_dir / "metrics.csv").exists():
            continue
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        commit = _run_commits(run_dir)
        rows.append({"task": run_dir.parts[-3], "variant": run_dir.parts[-2], "seed": int(run_dir.name[4:]),
                     "minutes": round(float(summary.get("elapsed_s", math.nan)) / 60, 1), "commit": commit})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _run_commits(run_dir: Path) -> str:
    """The commits a run ran on (several if it was resumed on another), from ``commits.txt``."""
    path = run_dir / "commits.txt"
    commits = list(dict.fromkeys(path.read_text().split())) if path.exists() else []
    return "+".join(commits) or "unknown"


def merge_with_committed(fresh, committed_path: Path):
    """``fresh`` plus the rows of ``committed_path`` (a CSV) whose run is not in ``fresh``."""
    import pandas as pd

    if not committed_path.exists():
        return fresh
    committed = pd.read_csv(committed_path)
    missing = sorted(set(fresh.columns) - set(committed.columns))
    if missing:
        raise ValueError(f"{committed_path} lacks the columns {missing}; rebuild it with --fresh")
    fresh_runs = set(map(tuple, fresh[RUN_KEY].itertuples(index=False)))
    keep = [tuple(key) not in fresh_runs for key in committed[RUN_KEY].itertuples(index=False)]
    parts = [frame for frame in (committed[keep][list(fresh.columns)], fresh) if not frame.empty]
    merged = pd.concat(parts, ignore_index=True) if len(parts) > 1 else (parts[0] if parts else fresh)
    return merged.sort_values([*RUN_KEY, *(["env_steps"] if "env_steps" in merged else [])], kind="stable",
                              ignore_index=True)


def reward_at(frame, steps: int, window: int):
    """Per seed: mean eval reward over evaluations in ``(steps - window, steps]`` (NaN if none)."""
    sub = frame[(frame.env_steps > steps - window) & (frame.env_steps <= steps)]
    return sub.groupby("seed").eval_reward.mean()


def render_markdown(args: argparse.Namespace, results, runs, command: str, commit: str) -> str:
    reference = tdmpc2_reference()
    budgets = [b for b in (25_000, 50_000, 100_000) if b <= args.steps]
    lines = ["# Learning benchmark", "",
             f"Command: `{command}` at commit `{commit}`.", "",
             f"Single-task online PWM (`alg={args.alg}` and `alg={args.alg}_flow`) and SAC "
             f"(stable-baselines3 2.9.2, default hyperparameters) on {args.steps:,} environment steps "
             f"(action repeat 2), one torch thread per run on a 2-core CPU. Evaluation: {args.eval_episodes} "
             f"deterministic episodes every {args.eval_every:,} steps on fixed reset seeds. "
             "A reward at N steps is the mean of the evaluations in the last "
             f"{args.eval_every * 2:,} steps up to N (two evaluations; three at the end of a run, whose final "
             "evaluation also falls in that window), then mean ± std over seeds.", "",
             *([f"Every PWM run also had the overrides {' '.join(f'`{o}`' for o in args.override)}.", ""]
               if args.override else []),
             *([f"`baseline`, `flow`: `alg={args.alg}`, `alg={args.alg}_flow` with the configs' defaults "
                "(`scripts/cfg/alg/pwm_defaults.yaml`).", ""]
               if {"baseline", "flow"} & set(results.variant) else []),
             *[line for name, variant in PWM_VARIANTS.items() if variant.overrides and name in set(results.variant)
               for line in (f"`{name}`: `alg={variant.alg(args.alg)}` with "
                            + " ".join(f"`{o}`" for o in variant.overrides) + f" ({variant.note}).", "")],
             "TD-MPC2 (reference): its released learning curves (TD-MPC2 repository, `results/tdmpc2/`, "
             "3 seeds, state observations), mean over seeds.", "",
             "| task | agent | seeds | steps run | " + " | ".join(f"reward @ {b // 1000}k" for b in budgets)
             + " | TD-MPC2 @ 100k | target (baseline) | run minutes |",
             "|---|---|---|---|" + "---|" * len(budgets) + "---|---|---|"]
    for task in [t for t in TASKS if t in set(results.task)]:
        curve = reference.get(task)
        ref100 = (f"{curve[curve.env_step == 100_000]['mean'].iloc[0]:.0f}" if curve is not None
                  and (curve.env_step == 100_000).any() else "n/a")
        for variant in VARIANTS:
            frame = results[(results.task == task) & (results.variant == variant)]
            if frame.empty:
                continue
            cells = []
            for budget in budgets:
                per_seed = reward_at(frame, budget, 2 * args.eval_every)
                if frame.env_steps.max() < budget:  # not there yet: no number
                    per_seed = per_seed.iloc[:0]
                cells.append(f"{per_seed.mean():.0f} ± {per_seed.std(ddof=0):.0f}" if len(per_seed) else "n/a")
            target = TARGETS.get(task)
            status = ""
            if variant == "baseline" and target is not None and len(budgets) and budgets[-1] == 100_000:
                final = reward_at(frame, 100_000, 2 * args.eval_every).mean()
                status = f"{target:.0f}: " + ("met" if final >= target else f"short by {target - final:.0f}")
            minutes = runs[(runs.task == task) & (runs.variant == variant)].minutes.dropna()
            time_cell = f"{minutes.mean():.0f}" if len(minutes) else "n/a"
            steps = int(frame.groupby("seed").env_steps.max().min())
            steps_cell = f"{steps // 1000}k" + ("" if steps >= args.steps else " (unfinished)")
            lines.append(f"| {task} | {variant} | {frame.seed.nunique()} | {steps_cell} | " + " | ".join(cells)
                         + f" | {ref100} | {status} | {time_cell} |")
    notes = Path(args.out) / "learning_notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    lines += ["", "![learning curves](learning.png)", ""]
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = tdmpc2_reference()
    tasks = [t for t in TASKS if t in set(results.task)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    colors = {**{name: variant.color for name, variant in PWM_VARIANTS.items()}, "sac": SAC_COLOR}
    for ax, task in zip(axes[0], tasks):
        for variant, color in colors.items():
            frame = results[(results.task == task) & (results.variant == variant)]
            if frame.empty:
                continue
            curve = frame.groupby("env_steps").eval_reward.agg(["mean", "std", "count"]).reset_index()
            ax.plot(curve.env_steps, curve["mean"], color=color, label=f"{variant} (n={frame.seed.nunique()})")
            ax.fill_between(curve.env_steps, curve["mean"] - curve["std"].fillna(0),
                            curve["mean"] + curve["std"].fillna(0), color=color, alpha=0.15)
        ref = reference.get(task)
        if ref is not None:
            ref = ref[ref.env_step <= results.env_steps.max()]
            ax.errorbar(ref.env_step, ref["mean"], yerr=[ref["mean"] - ref["min"], ref["max"] - ref["mean"]],
                        fmt="s", color="black", capsize=3, label="TD-MPC2 (published)")
        if task in TARGETS:
            ax.axhline(TARGETS[task], color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=6, loc="upper left")  # per panel: the agents differ between tasks
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylim(-20, 1020)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("eval episode reward")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def write_results(args: argparse.Namespace, command: str) -> None:
    from pwm.utils.common import atomic_write_text, git_commit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, runs = collect_results(args), collect_runs(args)
    if not args.fresh:
        results = merge_with_committed(results, out / "learning.csv")
        runs = merge_with_committed(runs, out / "learning_runs.csv")
    if results.empty:
        raise SystemExit(f"no runs under {args.runs_dir} and no results in {out}")
    commit = git_commit(REPO) or "unknown"
    atomic_write_text(results.to_csv(index=False), out / "learning.csv")
    atomic_write_text(runs.to_csv(index=False), out / "learning_runs.csv")
    plot(results, out / "learning.png")
    atomic_write_text(render_markdown(args, results, runs, command, commit), out / "learning.md")
    print(f"wrote {out / 'learning.csv'}, {out / 'learning_runs.csv'}, {out / 'learning.md'}, {out / 'learning.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS[:4])
    parser.add_argument("--variants", nargs="+", default=["baseline", "flow", "sac"],
                        choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=100_000, help="environment steps per run")
    parser.add_argument("--eval-every", type=int, default=5_000, help="environment steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--alg", default="pwm_small", help="PWM size (the flow twin is <alg>_flow)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one torch thread each)")
    parser.add_argument("--runs-dir", default=str(REPO / "benchmarks" / "runs" / "learning"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="drop the results already in --out")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for the PWM runs, e.g. alg.horizon=10")
    args = parser.parse_args()
    command = "python benchmarks/learning.py " + " ".join(sys.argv[1:])
    if not args.report_only:
        jobs = [(task, variant, seed) for seed in args.seeds for task in args.tasks for variant in args.variants]
        with ProcessPoolExecutor(max_workers=args.jobs, initializer=die_with_parent) as pool:
            futures = {pool.submit(_job, args, *job): job for job in jobs}
            for future in as_completed(futures):
                print(future.result(), flush=True)
    write_results(args, command)


if __name__ == "__main__":
    main()
