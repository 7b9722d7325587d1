"""Evaluate saved policies (``scripts/evaluate.py``): per-task reward, success and episode length,
TD-MPC2's normalised score, and the published numbers for the same tasks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pwm.envs.tasks import task_set
from pwm.experiments.published import DEFAULT_REFERENCE_DIR, normalized_score, pwm_published, tdmpc2_final
from pwm.envs.rollout import EVAL_SEED_OFFSET
from pwm.training.evaluation import NotAPolicyCheckpoint, evaluate, load_agent
from pwm.training.video import VideoConfig, VideoRecorder
from pwm.utils.common import atomic_write_text

COLUMNS = ["task", "variant", "episodes", "reward", "reward_std", "success", "episode_length", "score",
           "pwm_published", "tdmpc2_published", "tdmpc2_published_step", "checkpoint"]


@dataclass
class EvaluateConfig:
    """The keys of ``scripts/cfg/evaluate.yaml``."""

    checkpoint: str
    out_dir: str
    task: str | None = None
    task_set: str | None = None
    episodes: int = 10
    seed: int = 0
    device: str = "auto"
    reference_dir: str | None = None
    video: VideoConfig = field(default_factory=VideoConfig)

    def __post_init__(self) -> None:
        if isinstance(self.video, dict):
            self.video = VideoConfig(**self.video)
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.task_set is not None:
            task_set(self.task_set)  # names the valid sets if this one is unknown


def find_checkpoints(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file, else every ``checkpoint.pt`` under the folder ``path``."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    found = sorted(path.rglob("checkpoint.pt"))
    if not found:
        raise FileNotFoundError(f"no checkpoint.pt under {path}")
    return found


def evaluate_checkpoints(cfg: EvaluateConfig) -> pd.DataFrame:
    """One row per evaluated policy (columns :data:`COLUMNS`), plus a row per task of ``cfg.task_set``
    that has no policy (reward NaN). Policies of other tasks than ``cfg.task`` / the set are skipped."""
    out_dir = Path(cfg.out_dir)
    wanted = set(task_set(cfg.task_set)) if cfg.task_set else None
    reference_dir = cfg.reference_dir or DEFAULT_REFERENCE_DIR
    published = {**pwm_published("mt80", reference_dir), **pwm_published("mt30", reference_dir),
                 **(pwm_published(cfg.task_set, reference_dir) if cfg.task_set else {})}
    tdmpc2 = tdmpc2_final(reference_dir)
    rows, checkpoints = [], find_checkpoints(cfg.checkpoint)
    for checkpoint in tqdm(checkpoints, desc="evaluate", dynamic_ncols=True):
        try:
            trained = load_agent(checkpoint, cfg.device)
        except NotAPolicyCheckpoint:
            if len(checkpoints) == 1:
                raise
            continue  # a world-model checkpoint next to the policies it was extracted into
        if (cfg.task and trained.task != cfg.task) or (wanted is not None and trained.task not in wanted):
            continue
        env = trained.make_env(seed=EVAL_SEED_OFFSET + cfg.seed)
        try:
            metrics = evaluate(trained.agent, env, cfg.episodes, EVAL_SEED_OFFSET + cfg.seed, trained.task_id)
            if cfg.video.episodes:  # a separate rendered pass (same seeds, same episodes) keeps scoring fast
                tag = f"{trained.task}_{trained.variant}_{len(rows)}"
                video = VideoRecorder(cfg.video, out_dir / "videos", tag=tag)
                evaluate(trained.agent, env, cfg.video.episodes, EVAL_SEED_OFFSET + cfg.seed, trained.task_id,
                         video=video)
        finally:
            env.close()
        rows.append(_row(trained.task, trained.variant, cfg.episodes, metrics, str(checkpoint), published, tdmpc2))
    if not rows:
        scope = f"task {cfg.task!r}" if cfg.task else f"task set {cfg.task_set!r}"
        raise ValueError(f"no policy for {scope} in {cfg.checkpoint}")
    missing = sorted((wanted or set()) - {r["task"] for r in rows})
    for task in missing:
        rows.append(_row(task, "missing", 0, {}, "", published, tdmpc2))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if cfg.task_set:
        order = {t: i for i, t in enumerate(task_set(cfg.task_set))}
        frame = frame.sort_values(["task", "variant"], key=lambda c: c.map(order) if c.name == "task" else c)
    return frame.reset_index(drop=True)


def _row(task: str, variant: str, episodes: int, metrics: dict[str, float], checkpoint: str,
         published: dict[str, float], tdmpc2: dict[str, tuple[int, float]]) -> dict[str, object]:
    reward = metrics.get("eval/episode_reward", math.nan)
    success = metrics.get("eval/success", math.nan)
    step, tdmpc2_reward = tdmpc2.get(task, (None, math.nan))
    return {"task": task, "variant": variant, "episodes": episodes, "reward": reward,
            "reward_std": metrics.get("eval/episode_reward_std", math.nan), "success": success,
            "episode_length": metrics.get("eval/episode_length", math.nan),
            "score": normalized_score(task, reward, success) if metrics else math.nan,
            "pwm_published": published.get(task, math.nan), "tdmpc2_published": tdmpc2_reward,
            "tdmpc2_published_step": step, "checkpoint": checkpoint}


def mean_scores(frame: pd.DataFrame) -> dict[str, float]:
    """Per variant: TD-MPC2's normalised score averaged over tasks (seeds of a task averaged first)."""
    scored = frame[frame.score.notna()]
    per_task = scored.groupby(["variant", "task"]).score.mean()
    return {variant: float(group.mean()) for variant, group in per_task.groupby(level=0)}


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def render_markdown(frame: pd.DataFrame, cfg: EvaluateConfig) -> str:
    """The per-task table, the normalised scores, and where the published numbers come from."""
    lines = ["# Policy evaluation", "",
             f"`{cfg.checkpoint}`: {cfg.episodes} deterministic episodes per policy, reset seeds "
             f"{EVAL_SEED_OFFSET + cfg.seed}..{EVAL_SEED_OFFSET + cfg.seed + cfg.episodes - 1}. Score: TD-MPC2's "
             "normalised score (DMC reward / 10, Meta-World success x 100).", "",
             "| task | variant | reward | success | episode length | score | PWM (published) | TD-MPC2 (published) |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        tdmpc2 = (f"{_fmt(r.tdmpc2_published)} @ {int(r.tdmpc2_published_step) / 1e6:g}M steps"
                  if not np.isnan(r.tdmpc2_published) else "-")
        lines.append(f"| {r.task} | {r.variant} | {_fmt(r.reward)} ± {_fmt(r.reward_std)} | {_fmt(r.success, 2)} | "
                     f"{_fmt(r.episode_length, 0)} | {_fmt(r.score)} | {_fmt(r.pwm_published)} | {tdmpc2} |")
    lines.append("")
    evaluated = frame[frame.variant != "missing"].task.nunique()
    scope = f" of the {len(task_set(cfg.task_set))} {cfg.task_set} tasks" if cfg.task_set else ""
    for variant, score in mean_scores(frame).items():
        lines.append(f"- normalised score, {variant}: **{score:.1f}** over {evaluated}{scope} tasks")
    lines += ["", "PWM (published): PWM's released per-task MT30/MT80 results (multi-task world model, 48M; "
              f"{'the ' + cfg.task_set + ' set' if cfg.task_set else 'MT30, else MT80'}). TD-MPC2 (published): its "
              "released single-task learning curves, mean over 3 seeds at the last published step "
              "(benchmarks/reference/README.md names both sources).", ""]
    return "\n".join(lines)


def write_evaluation(frame: pd.DataFrame, cfg: EvaluateConfig) -> tuple[Path, Path]:
    """Write ``evaluation.csv`` and ``evaluation.md`` to ``cfg.out_dir`` (atomically)."""
    out_dir = Path(cfg.out_dir)
    csv_path = atomic_write_text(frame.to_csv(index=False), out_dir / "evaluation.csv")
    md_path = atomic_write_text(render_markdown(frame, cfg), out_dir / "evaluation.md")
    return csv_path, md_path
