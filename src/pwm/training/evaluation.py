"""Policy evaluation in the real environment."""

from __future__ import annotations

import numpy as np
import torch

from pwm.algorithms.pwm import PWM
from pwm.data.collect import Policy, run_episode
from pwm.envs.wrappers import TaskEnv


def agent_policy(agent: PWM, task_id: int | None = None, deterministic: bool = False) -> Policy:
    """Wrap a PWM agent as ``obs [obs_dim] -> action [act_dim]`` (numpy) for one task."""
    task = None if task_id is None else torch.tensor([task_id], device=agent.device)

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None]
        return agent.act(obs_t, task, deterministic=deterministic)[0].cpu().numpy()

    return policy


def evaluate(agent: PWM, env: TaskEnv, episodes: int, seed: int, task_id: int | None = None) -> dict[str, float]:
    """Mean episode reward, success and length over ``episodes`` deterministic-policy episodes.

    Episode ``i`` resets with ``seed + i``, so every variant is evaluated on the same initial states.
    """
    policy = agent_policy(agent, task_id, deterministic=True)
    results = [run_episode(env, policy, seed=seed + i) for i in range(episodes)]
    return {
        "eval/episode_reward": float(np.mean([e.total_reward for e in results])),
        "eval/episode_reward_std": float(np.std([e.total_reward for e in results])),
        "eval/success": float(np.mean([e.success for e in results])),
        "eval/episode_length": float(np.mean([e.length for e in results])),
    }
