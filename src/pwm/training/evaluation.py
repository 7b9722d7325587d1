"""Policy evaluation in the real environment, and world-model diagnostics on the episodes it produces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pwm.algorithms.build import build_pwm, variant_name
from pwm.algorithms.diagnostics import policy_imagination_gap, value_calibration, world_model_quality
from pwm.algorithms.pwm import PWM
from pwm.data.buffer import EpisodeBuffer
from pwm.envs.rollout import Episode, Policy, evaluate_policy
from pwm.envs.tasks import make_env, task_set
from pwm.envs.wrappers import PaddedEnv, TaskEnv
from pwm.training.video import VideoRecorder
from pwm.utils.common import load_checkpoint


def agent_policy(agent: PWM, task_id: int | None = None, deterministic: bool = False) -> Policy:
    """Wrap a PWM agent as ``obs [obs_dim] -> action [act_dim]`` (numpy) for one task."""
    task = None if task_id is None else torch.tensor([task_id], device=agent.device)

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None]
        return agent.act(obs_t, task, deterministic=deterministic)[0].cpu().numpy()

    return policy


def episode_diagnostics(agent: PWM, episodes: list[Episode], windows: int, seed: int,
                        task_id: int | None = None, deterministic_policy: bool = True) -> dict[str, float]:
    """World-model quality (:func:`~pwm.algorithms.diagnostics.world_model_quality`) on ``windows``
    ``H + 1``-step windows drawn (seeded) from ``episodes``; empty if no episode is long enough.

    Evaluation episodes were never trained on and follow the current policy, so these numbers say
    how well the model predicts the states the policy actually reaches. With ``deterministic_policy``
    (the episodes are the agent's deterministic policy's) the closed-loop gap of
    :func:`~pwm.algorithms.diagnostics.policy_imagination_gap` is added: the policy acting in its
    imagination from the windows' start states, against what it earned from them.
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
    metrics = world_model_quality(agent.wm, batch.obs, batch.action, batch.reward, task, gamma=agent.gamma)
    if deterministic_policy:
        metrics.update(policy_imagination_gap(
            agent.wm, lambda z: agent.act_latent(z, task, deterministic=True), batch.obs[0], batch.reward, task))
    return metrics


@torch.no_grad()
def critic_diagnostics(agent: PWM, episodes: list[Episode], task_id: int | None = None) -> dict[str, float]:
    """The critic's values at every state of ``episodes`` against their real discounted returns
    (:func:`~pwm.algorithms.diagnostics.value_calibration`, keys ``critic_eval/...``)."""
    values = []
    for episode in episodes:
        obs = episode.obs.to(agent.device, torch.float32)
        task = None if not agent.wm.multitask else torch.full((obs.shape[0],), int(task_id), device=agent.device)
        values.append(agent.critic.value(agent.policy_input(agent.wm.encode(obs, task), task)))
    return value_calibration(values, [e.reward for e in episodes], [e.terminated for e in episodes], agent.gamma)


def evaluate(agent: PWM, env: TaskEnv, episodes: int, seed: int, task_id: int | None = None,
             diagnostics_windows: int = 0, video: VideoRecorder | None = None,
             step: int | None = None) -> dict[str, float]:
    """Mean episode reward, success and length over ``episodes`` deterministic-policy episodes.

    Episode ``i`` resets with ``seed + i``, so every variant is evaluated on the same initial states.
    With ``diagnostics_windows > 0`` the world-model diagnostics on those episodes are added
    (keys ``wm_eval/...``, see :func:`episode_diagnostics`), and the critic's calibration on them
    (keys ``critic_eval/...``, see :func:`critic_diagnostics`). With a ``video`` recorder its first
    episodes are rendered and recorded under ``step``.
    """
    render_episodes, render_size = (video.episodes, video.config.size) if video is not None else (0, (1, 1))
    metrics, results = evaluate_policy(env, agent_policy(agent, task_id, deterministic=True), episodes, seed,
                                       render_episodes=render_episodes, render_size=render_size)
    metrics.update(episode_diagnostics(agent, results, diagnostics_windows, seed, task_id))
    if diagnostics_windows > 0:
        metrics.update(critic_diagnostics(agent, results, task_id))
    if video is not None:
        video.record(results, step)
    return metrics


class NotAPolicyCheckpoint(ValueError):
    """A checkpoint without a policy (e.g. a world-model checkpoint of ``pretrain_world_model.py``)."""


@dataclass
class TrainedAgent:
    """An agent rebuilt from a training checkpoint, with the task its policy was trained for."""

    agent: PWM
    task: str
    variant: str
    checkpoint: Path
    task_id: int | None = None  # index in ``task_set`` (multi-task world models)
    task_set: str | None = None
    seed: int | None = None  # the training seed, when the checkpoint records it

    def make_env(self, seed: int) -> TaskEnv:
        """The task's environment, padded to the world model's widths when the agent is multi-task."""
        env = make_env(self.task, seed=seed)
        if self.task_set is None:
            return env
        return PaddedEnv(env, self.agent.wm.obs_dim, self.agent.wm.act_dim)


def load_agent(checkpoint_path: str | Path, device: str = "auto") -> TrainedAgent:
    """Rebuild the agent of a ``checkpoint.pt`` written by ``train_singletask.py``, ``train_multitask.py``
    (policy extraction on a multi-task world model) or an A/B run, with its weights loaded."""
    path = Path(checkpoint_path)
    state = load_checkpoint(path)
    info: dict[str, Any] = state.get("run_info") or {}
    if "agent" not in state or "task" not in info:
        raise NotAPolicyCheckpoint(
            f"{path}: not a policy checkpoint of train_singletask.py, train_multitask.py or an A/B run "
            "(world-model checkpoints of pretrain_world_model.py have no policy to evaluate)")
    alg = info.get("alg") or (info.get("config") or {}).get("alg")
    if alg is None:
        raise ValueError(f"{path}: the checkpoint does not record its alg config (written by an older version)")
    task = info["task"]
    if info.get("task_set"):
        tasks = task_set(info["task_set"])
        agent = build_pwm(alg, info["obs_dim"], info["act_dim"], tasks, info["action_dims"], device=device)
        task_id = int(info["task_id"])
    else:
        env = make_env(task)
        agent = build_pwm(alg, env.obs_dim, env.act_dim, device=device)
        env.close()
        task_id = None
    try:
        agent.load_state_dict(state["agent"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the recorded alg config: {exc}") from exc
    variant = info.get("variant") or variant_name(alg)
    seed = info.get("seed")
    return TrainedAgent(agent, task, str(variant), path, task_id, info.get("task_set"),
                        int(seed) if seed is not None else None)


def checkpoint_policy(checkpoint_path: str | Path, deterministic: bool = False, device: str = "cpu") -> Policy:
    """The policy of a training checkpoint as ``obs -> action`` (numpy), e.g. to collect data with it."""
    trained = load_agent(checkpoint_path, device)
    return agent_policy(trained.agent, trained.task_id, deterministic=deterministic)
