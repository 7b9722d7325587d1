"""Training loops shared by the scripts.

* :func:`train_online`: single-task online PWM (collect with the policy, update, evaluate).
* :func:`train_offline`: PWM on a fixed dataset (the A/B protocol and multi-task policy extraction).

Both log every iteration to ``<run_dir>/metrics.csv`` (+ TensorBoard), checkpoint atomically to
``<run_dir>/checkpoint.pt`` and resume from it when ``resume`` is true, show a progress bar, and
write ``<run_dir>/summary.json`` at the end.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from pwm.algorithms.build import build_pwm, is_flow_config
from pwm.algorithms.diagnostics import world_model_quality
from pwm.algorithms.pwm import PWM
from pwm.data.buffer import EpisodeBuffer
from pwm.envs.rollout import COLLECT_SEED_OFFSET, EVAL_SEED_OFFSET, random_policy, run_episode
from pwm.envs.tasks import make_env
from pwm.envs.wrappers import TaskEnv
from pwm.training.evaluation import agent_policy, evaluate
from pwm.training.convergence import PlateauRule
from pwm.training.logger import RunLogger
from pwm.training.video import make_recorder
from pwm.utils.common import atomic_torch_save, atomic_write_text, load_checkpoint, seed_everything, set_threads
from pwm.utils.extras import check_optional_extras


def mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean over a list of metric dicts, ignoring NaNs (NaN if a key is NaN everywhere)."""
    keys = {k for metrics in history for k in metrics}
    out = {}
    for key in keys:
        values = [m[key] for m in history if key in m and not math.isnan(m[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def parameter_counts(agent: PWM) -> dict[str, float]:
    """Parameter counts of the world model, actor and critic (the report's parity table)."""
    modules = {"world_model": agent.wm, "actor": agent.actor, "critic": agent.critic}
    return {f"params/{name}": float(sum(p.numel() for p in m.parameters())) for name, m in modules.items()}


@dataclass
class Progress:
    """Loop position saved in checkpoints."""

    iteration: int = 0
    env_steps: int = 0
    elapsed_s: float = 0.0
    train_elapsed_s: float = 0.0


def _rng_state(generator: torch.Generator, np_rng: np.random.Generator | None = None) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "sampler": generator.get_state(),
            "numpy": np_rng.bit_generator.state if np_rng is not None else None}


def _restore_rng(state: dict[str, Any], generator: torch.Generator, np_rng: np.random.Generator | None = None):
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])
    if np_rng is not None and state.get("numpy") is not None:
        np_rng.bit_generator.state = state["numpy"]


def _restore(module: Any, state: dict[str, Any], checkpoint_path: Path) -> None:
    """``module.load_state_dict(state)`` with an error that says which checkpoint does not fit and why."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"{checkpoint_path} does not fit this run's model (another task, observation width or alg "
                         f"size?): {str(exc).splitlines()[0]} ... Use another general.run_dir, or resume=false to "
                         "start over") from exc


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(json.dumps(summary, indent=2, sort_keys=True), run_dir / "summary.json")


def _episode_seed(np_rng: np.random.Generator) -> int:
    """Reset seed of a training episode, drawn from the run's checkpointed generator: a resumed run
    meets the same initial states as an uninterrupted one (the environment's own RNG is not saved)."""
    return int(np_rng.integers(COLLECT_SEED_OFFSET, 2**31 - 1))


def _is_due(iteration: int, every: int, last: int) -> bool:
    return (iteration + 1) % every == 0 or iteration == last


def train_offline(
    agent: PWM,
    buffer: EpisodeBuffer,
    eval_env: TaskEnv,
    run_dir: str | Path,
    train_cfg: DictConfig,
    batch_size: int,
    seed: int,
    task_id: int | None = None,
    run_info: dict[str, Any] | None = None,
    desc: str = "pwm",
    time_offset_s: float = 0.0,
) -> dict[str, Any]:
    """Train ``agent`` on windows of ``buffer`` and evaluate in ``eval_env``.

    Batches come from a generator seeded with ``seed``, so two agents given the same buffer and seed
    train on exactly the same windows in the same order (the A/B data-parity control).

    ``train_cfg`` keys: ``iterations``, ``eval_every``, ``eval_episodes``, ``diagnostics_windows``,
    ``checkpoint_every``, ``resume``, ``train_world_model``, ``tensorboard``, ``wandb``, and optionally
    ``time_budget_s``: stop (with a final evaluation and checkpoint) once ``time_offset_s`` (e.g. the
    world-model pretraining seconds) plus the training seconds reach it, so variants of different
    cost can get equal wall-clock instead of equal iterations.
    """
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / "checkpoint.pt"
    generator = torch.Generator().manual_seed(seed)
    progress = Progress()
    if train_cfg.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _restore(agent, state["agent"], checkpoint_path)
        progress = Progress(**state["progress"])
        _restore_rng(state["rng"], generator)
    logger = RunLogger(run_dir, progress.iteration, tensorboard=train_cfg.tensorboard, wandb=train_cfg.wandb,
                       config=run_info)
    video = make_recorder(train_cfg, run_dir / "videos", logger)
    last = train_cfg.iterations - 1
    budget = train_cfg.get("time_budget_s")
    out_of_time = False
    sample_task = task_id if agent.wm.multitask else None
    bar = tqdm(range(progress.iteration, train_cfg.iterations), initial=progress.iteration,
               total=train_cfg.iterations, desc=desc, dynamic_ncols=True)
    for iteration in bar:
        start = time.perf_counter()
        agent.set_training_progress(iteration / train_cfg.iterations)
        batch = buffer.sample(batch_size, generator, task=sample_task).to(agent.device)
        metrics = agent.update(batch.obs, batch.action, batch.reward, batch.task if agent.wm.multitask else None,
                               train_world_model=train_cfg.train_world_model)
        progress.train_elapsed_s += time.perf_counter() - start
        out_of_time = budget is not None and time_offset_s + progress.train_elapsed_s >= budget
        if _is_due(iteration, train_cfg.eval_every, last) or out_of_time:
            metrics.update(evaluate(agent, eval_env, train_cfg.eval_episodes, seed=EVAL_SEED_OFFSET + seed,
                                    task_id=task_id, diagnostics_windows=train_cfg.diagnostics_windows,
                                    video=video, step=iteration))
            bar.set_postfix(reward=f"{metrics['eval/episode_reward']:.1f}")
        progress.iteration = iteration + 1
        progress.elapsed_s += time.perf_counter() - start
        metrics.update({"time/train_elapsed_s": progress.train_elapsed_s, "time/elapsed_s": progress.elapsed_s})
        logger.log(iteration, metrics)
        if _is_due(iteration, train_cfg.checkpoint_every, last) or out_of_time:
            atomic_torch_save({"agent": agent.state_dict(), "progress": vars(progress),
                               "rng": _rng_state(generator), "run_info": run_info}, checkpoint_path)
        if out_of_time:
            break
    logger.close()
    summary = _summarise(logger.rows, agent, progress, run_info)
    summary.update({"time_budget_s": budget, "stopped_by_budget": bool(out_of_time)})
    _write_summary(run_dir, summary)
    return summary


def _summarise(rows: list[dict[str, float]], agent: PWM, progress: Progress,
               run_info: dict[str, Any] | None) -> dict[str, Any]:
    evals = [r for r in rows if "eval/episode_reward" in r]
    summary: dict[str, Any] = dict(run_info or {})
    summary.update(parameter_counts(agent))
    summary.update({
        "iterations": progress.iteration,
        "env_steps": progress.env_steps,
        "train_elapsed_s": progress.train_elapsed_s,
        "elapsed_s": progress.elapsed_s,
        "final_reward": evals[-1]["eval/episode_reward"] if evals else float("nan"),
        "final_success": evals[-1]["eval/success"] if evals else float("nan"),
        "best_reward": max(r["eval/episode_reward"] for r in evals) if evals else float("nan"),
        "nan_skipped_steps": dict(agent.nan_counts),
    })
    return summary


def train_online(cfg: DictConfig) -> dict[str, Any]:
    """Single-task online PWM on ``cfg.env``: random seed episodes, then per iteration collect
    ``episodes_per_iteration`` episodes with the stochastic policy and run ``updates_per_iteration``
    PWM updates; evaluate every ``eval_every`` iterations. Checkpoints include the replay buffer."""
    check_optional_extras(cfg)
    run_dir = Path(cfg.general.run_dir)
    train = cfg.train
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    env, eval_env = make_env(cfg.env, seed=cfg.seed), make_env(cfg.env, seed=cfg.seed + EVAL_SEED_OFFSET)
    agent = build_pwm(cfg.alg, env.obs_dim, env.act_dim, device=cfg.device)
    buffer = EpisodeBuffer(env.obs_dim, env.act_dim, cfg.alg.horizon)
    generator, np_rng = torch.Generator().manual_seed(cfg.seed), np.random.default_rng(cfg.seed)
    checkpoint_path = run_dir / "checkpoint.pt"
    progress = Progress()
    if train.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _restore(agent, state["agent"], checkpoint_path)
        buffer.load_state_dict(state["buffer"])
        progress = Progress(**state["progress"])
        _restore_rng(state["rng"], generator, np_rng)
    run_info = {"task": cfg.env, "seed": cfg.seed, "variant": "flow" if is_flow_config(cfg.alg) else "baseline",
                "config": OmegaConf.to_container(cfg, resolve=True)}
    logger = RunLogger(run_dir, progress.iteration, tensorboard=train.tensorboard, wandb=train.wandb,
                       config=run_info["config"])
    video = make_recorder(train, run_dir / "videos", logger)
    while buffer.num_episodes < train.seed_episodes:
        episode = run_episode(env, random_policy(env.act_dim, np_rng), seed=_episode_seed(np_rng))
        buffer.add_episode(episode.obs, episode.action, episode.reward)
        progress.env_steps += episode.length
    last = train.iterations - 1
    bar = tqdm(range(progress.iteration, train.iterations), initial=progress.iteration, total=train.iterations,
               desc=f"{cfg.env} {run_info['variant']}", dynamic_ncols=True)
    for iteration in bar:
        start = time.perf_counter()
        agent.set_training_progress(iteration / train.iterations)
        episodes = [run_episode(env, agent_policy(agent), seed=_episode_seed(np_rng))
                    for _ in range(train.episodes_per_iteration)]
        for episode in episodes:
            buffer.add_episode(episode.obs, episode.action, episode.reward)
            progress.env_steps += episode.length
        collect_s = time.perf_counter() - start
        updates = []
        for _ in range(train.updates_per_iteration):
            batch = buffer.sample(cfg.alg.batch_size, generator).to(agent.device)
            updates.append(agent.update(batch.obs, batch.action, batch.reward))
        metrics = mean_metrics(updates)
        progress.train_elapsed_s += time.perf_counter() - start - collect_s
        metrics.update({"train/episode_reward": float(np.mean([e.total_reward for e in episodes])),
                        "train/env_steps": float(progress.env_steps), "time/collect_s": collect_s})
        if _is_due(iteration, train.eval_every, last):
            metrics.update(evaluate(agent, eval_env, train.eval_episodes, seed=EVAL_SEED_OFFSET + cfg.seed,
                                    diagnostics_windows=train.diagnostics_windows, video=video, step=iteration))
            bar.set_postfix(reward=f"{metrics['eval/episode_reward']:.1f}", steps=progress.env_steps)
        progress.iteration = iteration + 1
        progress.elapsed_s += time.perf_counter() - start
        metrics.update({"time/train_elapsed_s": progress.train_elapsed_s, "time/elapsed_s": progress.elapsed_s})
        logger.log(iteration, metrics)
        if _is_due(iteration, train.checkpoint_every, last):
            atomic_torch_save({"agent": agent.state_dict(), "buffer": buffer.state_dict(), "progress": vars(progress),
                               "rng": _rng_state(generator, np_rng), "run_info": run_info}, checkpoint_path)
    logger.close()
    summary = _summarise(logger.rows, agent, progress, run_info)
    _write_summary(run_dir, summary)
    return summary


def pretrain_world_model(
    agent: PWM,
    buffer: EpisodeBuffer,
    run_dir: str | Path,
    pretrain_cfg: DictConfig,
    batch_size: int,
    seed: int,
    meta: dict[str, Any],
    rank: int = 0,
    desc: str = "wm pretrain",
) -> dict[str, Any]:
    """World-model-only training on windows of ``buffer`` until a held-out error plateaus.

    Every ``eval_every`` iterations the world-model diagnostics
    (:func:`~pwm.algorithms.diagnostics.world_model_quality`) are computed on a fixed batch of
    ``heldout_windows`` windows of the buffer's held-out episodes, and their ``heldout_error`` feeds a
    :class:`~pwm.training.convergence.PlateauRule` (``patience``, ``min_improvement``,
    ``min_iterations``, ``window``). Training stops when it has converged or after ``iterations``
    (the cap), and the weights of the best evaluation are restored. Without held-out episodes it
    runs to the cap and ``converged`` is None (unchecked).

    Rank 0 logs (mean metrics every ``log_every`` iterations, diagnostics at every evaluation) and
    writes ``<run_dir>/checkpoint.pt`` holding the world model, its optimizer, the sampler and plateau
    state and ``meta`` (dims, tasks, action_dims, world-model class), which is what
    ``train_multitask.py`` loads. Other ranks only train (their gradients are averaged when
    ``agent.wm_loss`` is DDP-wrapped); each rank samples with its own seed and every rank takes the
    same stop decision.
    """
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / "checkpoint.pt"
    generator = torch.Generator().manual_seed(seed + rank)
    progress = Progress()
    plateau = PlateauRule(int(pretrain_cfg.patience), float(pretrain_cfg.min_improvement),
                          int(pretrain_cfg.min_iterations), int(pretrain_cfg.window))
    heldout = None
    if buffer.num_heldout_windows and pretrain_cfg.heldout_windows:
        heldout = buffer.sample(int(pretrain_cfg.heldout_windows), torch.Generator().manual_seed(seed),
                                split="heldout").to(agent.device)
    best_state: dict[str, torch.Tensor] | None = None
    finished = False
    if pretrain_cfg.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _restore(agent.wm, state["world_model"], checkpoint_path)
        agent.wm_optim.load_state_dict(state["wm_optim"])
        progress = Progress(**state["progress"])
        if "rng" in state:
            _restore_rng(state["rng"], generator)
        plateau.load_state_dict(state.get("plateau", {}))
        best_state, finished = state.get("best_world_model"), bool(state.get("finished", False))
    is_main = rank == 0
    logger = RunLogger(run_dir, progress.iteration, tensorboard=pretrain_cfg.tensorboard,
                       wandb=pretrain_cfg.wandb, config=meta) if is_main and not finished else None
    cap = int(pretrain_cfg.iterations)
    history: list[dict[str, float]] = []

    def save(done: bool) -> None:
        if is_main:
            atomic_torch_save({"world_model": agent.wm.state_dict(), "wm_optim": agent.wm_optim.state_dict(),
                               "progress": vars(progress), "rng": _rng_state(generator),
                               "plateau": plateau.state_dict(), "best_world_model": best_state,
                               "finished": done, "meta": meta}, checkpoint_path)

    bar = tqdm(range(progress.iteration, cap), initial=progress.iteration, total=cap, desc=desc,
               dynamic_ncols=True, disable=not is_main or finished)
    for iteration in ([] if finished else bar):
        start = time.perf_counter()
        batch = buffer.sample(batch_size, generator).to(agent.device)
        history.append(agent.update_world_model(batch.obs, batch.action, batch.reward,
                                                batch.task if agent.wm.multitask else None))
        progress.train_elapsed_s += time.perf_counter() - start
        progress.iteration = iteration + 1
        metrics: dict[str, float] = {}
        stop = False
        if heldout is not None and _is_due(iteration, pretrain_cfg.eval_every, cap - 1):
            metrics = world_model_quality(agent.wm, heldout.obs, heldout.action, heldout.reward,
                                          heldout.task if agent.wm.multitask else None, gamma=agent.gamma)
            if plateau.update(iteration, metrics["wm_eval/heldout_error"]):
                best_state = {k: v.detach().clone() for k, v in agent.wm.state_dict().items()}
            stop = _all_ranks_agree(plateau.converged(iteration))
            bar.set_postfix(heldout=f"{metrics['wm_eval/heldout_error']:.4f}",
                            best=f"{plateau.best:.4f}@{plateau.best_iteration + 1}")
        progress.elapsed_s += time.perf_counter() - start
        if is_main and (metrics or _is_due(iteration, pretrain_cfg.log_every, cap - 1)):
            metrics.update(mean_metrics(history))
            metrics.update({"time/train_elapsed_s": progress.train_elapsed_s,
                            "nan/wm_skipped_steps": float(agent.nan_counts["wm"])})
            logger.log(iteration, metrics)
            history = []
        if stop or iteration == cap - 1:
            if best_state is not None:
                agent.wm.load_state_dict(best_state)
            finished = True
            save(done=True)
            break
        if _is_due(iteration, pretrain_cfg.checkpoint_every, cap - 1):
            save(done=False)
    if logger is not None:
        logger.close()
    converged = plateau.converged(progress.iteration - 1) if heldout is not None else None
    return {"iterations": progress.iteration, "train_elapsed_s": progress.train_elapsed_s,
            "converged": converged, "best_iteration": plateau.best_iteration + 1,
            "heldout_error": plateau.best if heldout is not None else float("nan"),
            "wm_nan_skipped_steps": agent.nan_counts["wm"], "checkpoint": str(checkpoint_path)}


def _all_ranks_agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (the stop decision must be the same everywhere under DDP)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    on_gpu = torch.distributed.get_backend() == "nccl"
    value = torch.tensor([float(flag)], device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else None)
    torch.distributed.broadcast(value, src=0)
    return bool(value.item())


def world_model_meta(agent: PWM, alg_cfg: DictConfig, task_set_name: str | None) -> dict[str, Any]:
    """What a world-model checkpoint must carry to be rebuilt and checked against a config."""
    wm = agent.wm
    return {"obs_dim": wm.obs_dim, "act_dim": wm.act_dim, "tasks": wm.tasks,
            "action_dims": wm._action_masks.sum(-1).long().tolist(), "task_set": task_set_name,
            "world_model_target": str(alg_cfg.world_model_config._target_),
            "alg": OmegaConf.to_container(alg_cfg, resolve=True)}
