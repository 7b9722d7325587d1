"""Running a policy in an environment: episodes in TD-MPC2's layout, evaluation over fixed reset seeds.

Below both :mod:`pwm.data` (collection) and :mod:`pwm.training` (evaluation), which share it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pwm.envs.wrappers import TaskEnv

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
