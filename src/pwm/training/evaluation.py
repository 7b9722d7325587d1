"""Policy evaluation in the real environment, and world-model diagnostics on the episodes it produces."""

from __future__ import annotations

import numpy as np
import torch

from pwm.algorithms.diagnostics import world_model_quality
from pwm.algorithms.pwm import PWM
from pwm.data.buffer import EpisodeBuffer
from pwm.data.collect import Episode, Policy, evaluate_policy
from pwm.envs.wrappers import TaskEnv


def agent_policy(agent: PWM, task_id: int | None = None, deterministic: bool = False) -> Policy:
    """Wrap a PWM agent as ``obs [obs_dim] -> action [act_dim]`` (numpy) for one task."""
    task = None if task_id is None else torch.tensor([task_id], device=agent.device)

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None]
        return agent.act(obs_t, task, deterministic=deterministic)[0].cpu().numpy()

    return policy


def episode_diagnostics(agent: PWM, episodes: list[Episode], windows: int, seed: int,
                        task_id: int | None = None) -> dict[str, float]:
    """World-model quality (:func:`~pwm.algorithms.diagnostics.world_model_quality`) on ``windows``
    ``H + 1``-step windows drawn (seeded) from ``episodes``; empty if no episode is long enough.

    Evaluation episodes were never trained on and follow the current policy, so these numbers say
    how well the model predicts the states the policy actually reaches.
    """
    if windows < 1 or not episodes:
        return {}
    obs_dim, act_dim = episodes[0].obs.shape[-1], episodes[0].action.shape[-1]
    buffer = EpisodeBuffer(obs_dim, act_dim, agent.horizon, capacity=sum(e.obs.shape[0] for e in episodes))
    for episode in episodes:
        buffer.add_episode(episode.obs, episode.action, episode.reward)
    if buffer.num_windows == 0:
        return {}
    batch = buffer.sample(windows, torch.Generator().manual_seed(seed)).to(agent.device)
    task = None if not agent.wm.multitask else torch.full((windows,), int(task_id), device=agent.device)
    return world_model_quality(agent.wm, batch.obs, batch.action, batch.reward, task, gamma=agent.gamma)


def evaluate(agent: PWM, env: TaskEnv, episodes: int, seed: int, task_id: int | None = None,
             diagnostics_windows: int = 0) -> dict[str, float]:
    """Mean episode reward, success and length over ``episodes`` deterministic-policy episodes.

    Episode ``i`` resets with ``seed + i``, so every variant is evaluated on the same initial states.
    With ``diagnostics_windows > 0`` the world-model diagnostics on those episodes are added
    (keys ``wm_eval/...``, see :func:`episode_diagnostics`).
    """
    metrics, results = evaluate_policy(env, agent_policy(agent, task_id, deterministic=True), episodes, seed)
    metrics.update(episode_diagnostics(agent, results, diagnostics_windows, seed, task_id))
    return metrics
