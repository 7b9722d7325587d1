"""The three training loops, each written as what one iteration does on the shared skeleton.

* :func:`train_online`: single-task online PWM (collect with the policy, update, evaluate).
* :func:`train_offline`: PWM on a fixed dataset (the A/B protocol and multi-task policy extraction).
* :func:`pretrain_world_model`: world-model-only training until a held-out error plateaus.

:class:`~pwm.training.skeleton.TrainingLoop` does the rest for all three: the evaluate / log /
checkpoint schedule, ``<run_dir>/metrics.csv`` (+ TensorBoard), atomic ``<run_dir>/checkpoint.pt``
with every RNG and sampler state (a resumed run is bit-identical to an uninterrupted one), the
progress bar. The policy loops write ``<run_dir>/summary.json`` at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pwm.algorithms.diagnostics import world_model_quality
from pwm.algorithms.pwm import PWM
from pwm.data.buffer import EpisodeBuffer
from pwm.envs.rollout import COLLECT_SEED_OFFSET, EVAL_SEED_OFFSET, random_policy, run_episode
from pwm.envs.wrappers import TaskEnv
from pwm.training.evaluation import agent_policy, evaluate
from pwm.training.convergence import PlateauRule
from pwm.training.settings import OfflineSettings, OnlineSettings, PretrainSettings
from pwm.training.skeleton import BestWeights, Progress, Schedule, TrainingLoop, mean_metrics
from pwm.training.video import make_recorder
from pwm.utils.common import atomic_write_text


def parameter_counts(agent: PWM) -> dict[str, float]:
    """Parameter counts of the world model, actor and critic (the report's parity table)."""
    modules = {"world_model": agent.wm, "actor": agent.actor, "critic": agent.critic}
    return {f"params/{name}": float(sum(p.numel() for p in m.parameters())) for name, m in modules.items()}


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(json.dumps(summary, indent=2, sort_keys=True), run_dir / "summary.json")


def _episode_seed(np_rng: np.random.Generator) -> int:
    """Reset seed of a training episode, drawn from the run's checkpointed generator: a resumed run
    meets the same initial states as an uninterrupted one (the environment's own RNG is not saved)."""
    return int(np_rng.integers(COLLECT_SEED_OFFSET, 2**31 - 1))


def check_offline_agent(agent: PWM) -> None:
    """Refuse settings that only mean something online, before an offline run writes anything."""
    if agent.uses_recent_data_windows:
        raise ValueError(f"alg.critic_data_recent_steps={agent.critic_data_recent_steps}: a fixed dataset has no recent "
                         "steps of the current policy; it applies to online training (train_singletask.py) only")


def train_offline(
    agent: PWM,
    buffer: EpisodeBuffer,
    eval_env: TaskEnv,
    run_dir: str | Path,
    settings: OfflineSettings | DictConfig,
    batch_size: int,
    seed: int,
    task_id: int | None = None,
    run_info: dict[str, Any] | None = None,
    desc: str = "pwm",
    time_offset_s: float = 0.0,
    eval_seed: int | None = None,
) -> dict[str, Any]:
    """Train ``agent`` on windows of ``buffer`` and evaluate in ``eval_env``.

    Batches of ``settings.batch_size`` windows (``batch_size`` when that is unset) come from a generator seeded
    with ``seed``, so two agents given the same buffer and seed train on exactly the same windows in the same
    order (the A/B data-parity control); the summary records the size (``policy_batch_size``). Evaluation
    episode ``i`` resets with ``EVAL_SEED_OFFSET + eval_seed + i`` (``eval_seed`` defaults to ``seed``;
    several policies of one job share their initial states by sharing it).

    ``settings``: :class:`~pwm.training.settings.OfflineSettings` (or the ``train`` section it is
    read from). With ``time_budget_s`` set, training stops (with a final evaluation and checkpoint)
    once ``time_offset_s`` (e.g. the world-model pretraining seconds) plus the training seconds reach
    it, so variants of different cost can get equal wall-clock instead of equal iterations.
    """
    settings = OfflineSettings.from_cfg(settings, "train")
    batch_size = settings.policy_batch_size(batch_size)
    check_offline_agent(agent)
    run_dir = Path(run_dir)
    loop = TrainingLoop(run_dir, Schedule(settings.iterations, settings.eval_every, settings.checkpoint_every),
                        seed=seed, parts={"agent": agent}, static={"run_info": run_info}, resume=settings.resume,
                        tensorboard=settings.tensorboard, wandb=settings.wandb, logger_config=run_info, desc=desc)
    video = make_recorder(settings.video, run_dir / "videos", loop.logger)
    budget = settings.time_budget_s
    sample_task = task_id if agent.wm.multitask else None

    def step(iteration: int) -> dict[str, float]:
        with loop.clock():
            agent.set_training_progress(iteration / settings.iterations)
            batch = buffer.sample(batch_size, loop.generator, task=sample_task).to(agent.device)
            metrics = agent.update(batch.obs, batch.action, batch.reward, batch.task if agent.wm.multitask else None,
                                   train_world_model=settings.train_world_model)
        if budget is not None and time_offset_s + loop.progress.train_elapsed_s >= budget:
            loop.request_stop()
        return metrics

    eval_seed = seed if eval_seed is None else eval_seed

    def evaluate_now(iteration: int) -> dict[str, float]:
        metrics = evaluate(agent, eval_env, settings.eval_episodes, seed=EVAL_SEED_OFFSET + eval_seed, task_id=task_id,
                           diagnostics_windows=settings.diagnostics_windows, video=video, step=iteration)
        loop.show(reward=f"{metrics['eval/episode_reward']:.1f}")
        return metrics

    loop.run(step, evaluate_now)
    summary = _summarise(loop.rows, agent, loop.progress, run_info)
    summary.update({"time_budget_s": budget, "stopped_by_budget": loop.stop_requested, "policy_batch_size": batch_size})
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


def train_online(
    agent: PWM,
    env: TaskEnv,
    eval_env: TaskEnv,
    buffer: EpisodeBuffer,
    run_dir: str | Path,
    settings: OnlineSettings | DictConfig,
    batch_size: int,
    seed: int,
    run_info: dict[str, Any] | None = None,
    desc: str = "pwm online",
) -> dict[str, Any]:
    """Single-task online PWM in ``env``: ``seed_episodes`` random episodes into ``buffer``, then per
    iteration collect ``episodes_per_iteration`` episodes with the stochastic policy and run
    ``updates_per_iteration`` PWM updates; evaluate in ``eval_env`` every ``eval_every`` iterations.
    Checkpoints include the replay buffer. ``settings``: :class:`~pwm.training.settings.OnlineSettings`."""
    settings = OnlineSettings.from_cfg(settings, "train")
    run_dir = Path(run_dir)
    loop = TrainingLoop(run_dir, Schedule(settings.iterations, settings.eval_every, settings.checkpoint_every),
                        seed=seed, parts={"agent": agent, "buffer": buffer}, static={"run_info": run_info},
                        resume=settings.resume, tensorboard=settings.tensorboard, wandb=settings.wandb,
                        logger_config=(run_info or {}).get("config", run_info), desc=desc)
    video = make_recorder(settings.video, run_dir / "videos", loop.logger)
    while buffer.num_episodes < settings.seed_episodes:
        episode = run_episode(env, random_policy(env.act_dim, loop.np_rng), seed=_episode_seed(loop.np_rng))
        buffer.add_episode(episode.obs, episode.action, episode.reward)
        loop.progress.env_steps += episode.length

    def step(iteration: int) -> dict[str, float]:
        start = time.perf_counter()
        agent.set_training_progress(iteration / settings.iterations)
        episodes = [run_episode(env, agent_policy(agent), seed=_episode_seed(loop.np_rng))
                    for _ in range(settings.episodes_per_iteration)]
        for episode in episodes:
            buffer.add_episode(episode.obs, episode.action, episode.reward)
            loop.progress.env_steps += episode.length
        collect_s = time.perf_counter() - start
        updates = []
        with loop.clock():
            for _ in range(settings.updates_per_iteration):
                batch = buffer.sample(batch_size, loop.generator).to(agent.device)
                data_windows = None
                if agent.uses_recent_data_windows:
                    recent = buffer.sample(batch_size, loop.generator,
                                           recent_steps=agent.critic_data_recent_steps).to(agent.device)
                    data_windows = (recent.obs, recent.action, recent.reward)
                updates.append(agent.update(batch.obs, batch.action, batch.reward, data_windows=data_windows))
        return {**mean_metrics(updates), "train/episode_reward": float(np.mean([e.total_reward for e in episodes])),
                "train/env_steps": float(loop.progress.env_steps), "time/collect_s": collect_s}

    def evaluate_now(iteration: int) -> dict[str, float]:
        metrics = evaluate(agent, eval_env, settings.eval_episodes, seed=EVAL_SEED_OFFSET + seed,
                           diagnostics_windows=settings.diagnostics_windows, video=video, step=iteration)
        loop.show(reward=f"{metrics['eval/episode_reward']:.1f}", steps=loop.progress.env_steps)
        return metrics

    loop.run(step, evaluate_now)
    summary = _summarise(loop.rows, agent, loop.progress, run_info)
    _write_summary(run_dir, summary)
    return summary


def pretrain_world_model(
    agent: PWM,
    buffer: EpisodeBuffer,
    run_dir: str | Path,
    settings: PretrainSettings | DictConfig,
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
    (the cap), and the weights of the best evaluation are restored. The summary holds the lowest held-out
    error (``heldout_error``, the kept weights') and the mean of the last ``window`` evaluations
    (``heldout_error_final``: where training ended, without the minimum's luck of the draw). ``lr_schedule=linear`` decays the
    world model's learning rate linearly from its initial value (at iteration 0) to ``lr_final`` (at
    the cap); ``constant`` keeps it, and with ``anneal_iterations`` > 0 decays it to ``lr_final`` over that
    many iterations after the plateau, then stops (``plateau_iterations`` in the summary: where the
    plateau was reached). Without held-out episodes it
    runs to the cap and ``converged`` is None (unchecked).

    Rank 0 logs (mean metrics every ``log_every`` iterations, diagnostics at every evaluation) and
    writes ``<run_dir>/checkpoint.pt`` holding the world model, its optimizer, the sampler and plateau
    state and ``meta`` (dims, tasks, action_dims, world-model class), which is what
    ``train_multitask.py`` loads. Other ranks only train (their gradients are averaged when
    ``agent.wm_loss`` is DDP-wrapped); each rank samples with its own seed and every rank takes the
    same stop decision.
    """
    settings = PretrainSettings.from_cfg(settings, "pretrain")
    cap = settings.iterations
    plateau = PlateauRule(settings.patience, settings.min_improvement, settings.min_iterations,
                          settings.window, settings.anneal_iterations)
    best = BestWeights()
    heldout = None
    if buffer.num_heldout_windows and settings.heldout_windows:
        heldout = buffer.sample(settings.heldout_windows, torch.Generator().manual_seed(seed),
                                split="heldout").to(agent.device)
    loop = TrainingLoop(run_dir, Schedule(cap, settings.eval_every, settings.checkpoint_every,
                                          settings.log_every),
                        seed=seed, rank=rank, resume=settings.resume,
                        parts={"world_model": agent.wm, "wm_optim": agent.wm_optim, "plateau": plateau,
                               "best_world_model": best},
                        static={"meta": meta}, identity=pretrain_schedule_identity(settings),
                        tensorboard=settings.tensorboard, wandb=settings.wandb, logger_config=meta, desc=desc)

    def step(iteration: int) -> dict[str, float]:
        with loop.clock():
            if settings.lr_schedule == "linear":
                agent.set_pretraining_progress(iteration / cap, settings.lr_final)
            elif plateau.reached:
                agent.set_pretraining_progress(plateau.anneal_fraction(iteration), settings.lr_final)
            batch = buffer.sample(batch_size, loop.generator).to(agent.device)
            return agent.update_world_model(batch.obs, batch.action, batch.reward,
                                            batch.task if agent.wm.multitask else None)

    def evaluate_heldout(iteration: int) -> dict[str, float]:
        metrics = world_model_quality(agent.wm, heldout.obs, heldout.action, heldout.reward,
                                      heldout.task if agent.wm.multitask else None, gamma=agent.gamma)
        if plateau.update(iteration, metrics["wm_eval/heldout_error"]):
            best.keep(agent.wm)
        if plateau.mark_and_check_stop(iteration, _all_ranks_agree(plateau.converged(iteration))):
            loop.request_stop()
        loop.show(heldout=f"{metrics['wm_eval/heldout_error']:.4f}",
                  best=f"{plateau.best:.4f}@{plateau.best_iteration + 1}")
        return metrics

    def finish() -> None:
        best.restore(agent.wm)
        # What follows (policy extraction, finetuning) starts from the configured rate, as without a schedule.
        agent.set_pretraining_progress(0.0, settings.lr_final)

    loop.run(step, evaluate_heldout if heldout is not None else None, on_finish=finish,
             log_extra=lambda: {"nan/wm_skipped_steps": float(agent.nan_counts["wm"]),
                                "wm/lr": float(agent.wm_optim.param_groups[0]["lr"])})
    progress = loop.progress
    # the rule's own test as well: a finished checkpoint from before the plateau was marked has no mark
    converged = (plateau.reached or plateau.converged(progress.iteration - 1)) if heldout is not None else None
    return {"iterations": progress.iteration, "train_elapsed_s": progress.train_elapsed_s,
            "converged": converged, "plateau_iterations": plateau.plateau_iterations if plateau.reached else None,
            "best_iteration": plateau.best_iteration + 1,
            "heldout_error": plateau.best if heldout is not None else float("nan"),
            "heldout_error_final": plateau.window_mean() if heldout is not None else float("nan"),
            "wm_nan_skipped_steps": agent.nan_counts["wm"], "checkpoint": str(loop.checkpoint_path)}


def pretrain_schedule_identity(settings: PretrainSettings) -> dict[str, Any]:
    """Under ``lr_schedule=linear`` the cap sets every iteration's rate, so a checkpoint resumes only under
    its own cap and final rate (a constant-rate run may be extended by raising ``iterations``)."""
    if settings.lr_schedule != "linear":
        # a plateau's decay sets the rates after it, so its length and final rate are part of a run
        return ({"pretrain_anneal": {"iterations": settings.anneal_iterations, "lr_final": settings.lr_final}}
                if settings.anneal_iterations else {})
    return {"pretrain_lr_schedule": {"iterations": settings.iterations, "lr_final": settings.lr_final}}


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
