"""Run episodes in an environment and keep them in TD-MPC2's layout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pwm.envs.wrappers import TaskEnv
from pwm.utils.common import load_checkpoint, set_threads

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class Episode:
    """One episode: ``obs [T+1, obs_dim]``, ``action [T+1, A]`` and ``reward [T+1]`` with NaN in row 0;
    ``frames [T+1, height, width, 3]`` (uint8) when it was rendered."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    success: float
    terminated: bool
    frames: np.ndarray | None = None

    @property
    def length(self) -> int:
        return self.obs.shape[0] - 1

    @property
    def total_reward(self) -> float:
        return float(self.reward[1:].sum())


def random_policy(act_dim: int, rng: np.random.Generator) -> Policy:
    """Uniform random actions in ``[-1, 1]^act_dim``."""
    return lambda obs: rng.uniform(-1.0, 1.0, act_dim)


def run_episode(env: TaskEnv, policy: Policy, seed: int | None = None,
                render_size: tuple[int, int] | None = None) -> Episode:
    """Run one episode to termination or truncation. ``success`` is the last step's (as TD-MPC2 reports).

    With ``render_size = (width, height)`` every state, the initial one included, is rendered into
    ``Episode.frames``.
    """
    obs = env.reset(seed)
    observations, actions, rewards = [obs], [np.full(env.act_dim, np.nan)], [np.nan]
    frames = [env.render(*render_size)] if render_size is not None else None
    info, terminated = {"success": 0.0}, False
    while True:
        action = np.asarray(policy(obs), dtype=np.float32).reshape(-1)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        if frames is not None:
            frames.append(env.render(*render_size))
        if terminated or truncated:
            break
    return Episode(
        obs=torch.as_tensor(np.stack(observations), dtype=torch.float32),
        action=torch.as_tensor(np.stack(actions), dtype=torch.float32),
        reward=torch.as_tensor(np.asarray(rewards), dtype=torch.float32),
        success=float(info.get("success", 0.0)),
        terminated=terminated,
        frames=np.stack(frames) if frames is not None else None,
    )


def evaluate_policy(env: TaskEnv, policy: Policy, episodes: int, seed: int, render_episodes: int = 0,
                    render_size: tuple[int, int] = (160, 120)) -> tuple[dict[str, float], list[Episode]]:
    """Mean episode reward, success and length of ``policy`` over ``episodes`` episodes, and the episodes.

    Episode ``i`` resets with ``seed + i``, so every agent evaluated with one seed meets the same
    initial states. The first ``render_episodes`` episodes carry frames of ``render_size = (width, height)``.
    """
    results = [run_episode(env, policy, seed=seed + i, render_size=render_size if i < render_episodes else None)
               for i in range(episodes)]
    metrics = {
        "eval/episode_reward": float(np.mean([e.total_reward for e in results])),
        "eval/episode_reward_std": float(np.std([e.total_reward for e in results])),
        "eval/success": float(np.mean([e.success for e in results])),
        "eval/episode_length": float(np.mean([e.length for e in results])),
    }
    return metrics, results


#: Evaluation episodes of a run with seed ``s`` reset with ``EVAL_SEED_OFFSET + s + i``: the same
#: initial states for every variant and agent, never those of training or data collection.
EVAL_SEED_OFFSET = 10_000
#: Offset of the reset seeds used for data collection, so collected and evaluation episodes never
#: share initial states.
COLLECT_SEED_OFFSET = 1_000_000


def pad_episode(episode: Episode, obs_dim: int, act_dim: int) -> Episode:
    """Zero-pad observations and actions to the multi-task widths (row 0 of action stays NaN)."""
    obs = torch.nn.functional.pad(episode.obs, (0, obs_dim - episode.obs.shape[1]))
    action = torch.nn.functional.pad(episode.action, (0, act_dim - episode.action.shape[1]))
    action[0] = float("nan")
    return Episode(obs, action, episode.reward, episode.success, episode.terminated)


def load_policy(checkpoint_path: str, env, deterministic: bool) -> Policy:
    """Policy of a ``train_singletask.py`` checkpoint, rebuilt for ``env``."""
    from omegaconf import OmegaConf

    from pwm.algorithms.build import build_pwm
    from pwm.training.evaluation import agent_policy
    state = load_checkpoint(checkpoint_path)
    config = (state.get("run_info") or {}).get("config")
    if config is None:
        raise ValueError(f"{checkpoint_path}: not a train_singletask.py checkpoint (no run_info.config)")
    agent = build_pwm(OmegaConf.create(config["alg"]), env.obs_dim, env.act_dim, device="cpu")
    agent.load_state_dict(state["agent"])
    return agent_policy(agent, deterministic=deterministic)


COLLECT_POLICIES = ("random", "checkpoint", "sac")


@dataclass
class CollectConfig:
    """What :func:`collect_dataset` collects (the keys of ``scripts/cfg/collect.yaml``)."""

    tasks: list[str]
    out_dir: str
    task_set: str | None = None
    episodes: int = 10
    episodes_per_file: int = 50
    policy: str = "random"
    sac_steps: int = 30_000
    checkpoints: dict[str, str] = field(default_factory=dict)
    deterministic: bool = False
    pad_obs_dim: int | None = None
    pad_act_dim: int | None = None
    seed: int = 0
    threads: int | None = 1


def collect_dataset(cfg: CollectConfig) -> list:
    """Collect episodes of every task in ``cfg.tasks`` and write TD-MPC2-format files.

    ``cfg.policy``: ``random`` or ``checkpoint`` run ``cfg.episodes`` episodes per task with uniform
    random actions or a ``train_singletask.py`` policy; ``sac`` keeps the whole replay of a SAC agent
    that learns the task for ``cfg.sac_steps`` steps (data that covers everything from random to
    good behaviour, as TD-MPC2's datasets do). Episodes of one task with equal length share files of
    up to ``episodes_per_file`` episodes, in the order they were collected (terminating tasks
    produce several lengths). Returns the written paths.
    """
    from pathlib import Path

    from tqdm.auto import tqdm

    from pwm.data.tdmpc2_format import write_episodes
    from pwm.envs.tasks import action_dim, make_env, task_set

    set_threads(cfg.threads)
    tasks = list(cfg.tasks)
    if cfg.task_set:
        members = task_set(cfg.task_set)
        outside = [t for t in tasks if t not in members]
        if outside:
            raise ValueError(f"tasks {outside} are not in task set {cfg.task_set!r}")
        task_ids = [members.index(t) for t in tasks]
    elif len(tasks) == 1:
        members, task_ids = tasks, [0]
    else:
        raise ValueError("collecting several tasks needs task_set (mt30 or mt80) to assign task ids")
    if cfg.policy not in COLLECT_POLICIES:
        raise ValueError(f"policy must be one of {COLLECT_POLICIES}, got {cfg.policy!r}")
    envs = [make_env(t, seed=cfg.seed) for t in tasks]
    obs_dim = cfg.pad_obs_dim or max(env.obs_dim for env in envs)
    act_dim = cfg.pad_act_dim or max(action_dim(t) for t in members)
    for env in envs:
        if env.obs_dim > obs_dim or env.act_dim > act_dim:
            raise ValueError(f"{env.name}: dims ({env.obs_dim}, {env.act_dim}) exceed pad dims ({obs_dim}, {act_dim})")
    out_dir, written = Path(cfg.out_dir), []
    for task_index, (task, task_id, env) in enumerate(zip(tasks, task_ids, envs)):
        if cfg.policy == "sac":
            from pwm.data.sac import train_sac

            print(f"collect {task}: replay of SAC learning for {cfg.sac_steps} steps", flush=True)
            collected = train_sac(task, cfg.seed, cfg.sac_steps, eval_every=0, eval_episodes=0, record_episodes=True)[1]
        else:
            if cfg.policy == "checkpoint":
                if task not in cfg.checkpoints:
                    raise ValueError(f"policy=checkpoint but checkpoints has no entry for task {task!r}")
                policy = load_policy(cfg.checkpoints[task], env, cfg.deterministic)
            else:
                policy = random_policy(env.act_dim, np.random.default_rng([cfg.seed, task_index]))
            collected = [run_episode(env, policy, seed=COLLECT_SEED_OFFSET + 1000 * cfg.seed + i)
                         for i in tqdm(range(cfg.episodes), desc=f"collect {task}", dynamic_ncols=True)]
        by_length: dict[int, list[Episode]] = {}
        for episode in collected:
            by_length.setdefault(episode.length, []).append(pad_episode(episode, obs_dim, act_dim))
        for length, episodes in sorted(by_length.items()):
            for chunk, start in enumerate(range(0, len(episodes), cfg.episodes_per_file)):
                group = episodes[start:start + cfg.episodes_per_file]
                path = out_dir / f"{task}-seed{cfg.seed}-len{length}-{chunk:03d}.pt"
                written.append(write_episodes(
                    path, torch.stack([e.obs for e in group]), torch.stack([e.action for e in group]),
                    torch.stack([e.reward for e in group]), torch.full((len(group), length + 1), task_id),
                ))
        env.close()
    return written
