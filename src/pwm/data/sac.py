"""Soft actor-critic from stable-baselines3 on our task wrappers.

Two uses: the reference row of the learning benchmark (what a researcher would otherwise pick), and
the collector of datasets that cover good behaviour: :func:`train_sac` can keep every episode the
learning agent experienced, which is what TD-MPC2's released datasets are (the replay of learning
agents), so the A/B protocol's policies are extracted from data in which the task is solved.

SAC runs with stable-baselines3's default hyperparameters; only the evaluation protocol is ours
(deterministic actions, the same reset seeds as PWM's evaluations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from pwm.envs.rollout import EVAL_SEED_OFFSET, Episode, evaluate_policy, run_episode
from pwm.envs.tasks import make_env
from pwm.envs.wrappers import TaskEnv


class RecordingGymEnv(gym.Env):
    """A :class:`~pwm.envs.wrappers.TaskEnv` as a gymnasium env, keeping every finished episode in
    TD-MPC2's layout (``obs [T+1]``, NaN action and reward in row 0) when ``record`` is true."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env: TaskEnv, record: bool = False):
        super().__init__()
        self.env, self.record = env, record
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (env.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (env.act_dim,), np.float32)
        self.episodes: list[Episode] = []
        self.episode_returns: list[float] = []
        self._return = 0.0
        self._obs: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs = self.env.reset(seed)
        self._obs, self._actions, self._rewards = [obs], [np.full(self.env.act_dim, np.nan)], [np.nan]
        self._return = 0.0
        return obs, {}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        if terminated or truncated:
            self.episode_returns.append(self._return)
        if self.record:
            self._obs.append(obs)
            self._actions.append(np.clip(action, -1.0, 1.0))
            self._rewards.append(reward)
            if terminated or truncated:
                self.episodes.append(Episode(
                    obs=torch.as_tensor(np.stack(self._obs), dtype=torch.float32),
                    action=torch.as_tensor(np.stack(self._actions), dtype=torch.float32),
                    reward=torch.as_tensor(np.asarray(self._rewards), dtype=torch.float32),
                    success=float(info.get("success", 0.0)), terminated=bool(terminated)))
        return obs, reward, terminated, truncated, info

    def close(self):
        self.env.close()


def _learner_callback(env: RecordingGymEnv, total_steps: int, desc: str | None, stop_at_return: float | None):
    """A stable-baselines3 callback that advances a tqdm bar per environment step (when ``desc`` is
    given: SAC collection runs for minutes) and, with ``stop_at_return``, ends learning once a
    training episode has returned at least that much. Its ``solved`` attribute says whether it did."""
    from stable_baselines3.common.callbacks import BaseCallback

    bar = tqdm(total=total_steps, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0) if desc else None

    class LearnerCallback(BaseCallback):
        solved = False

        def _on_step(self) -> bool:
            if bar is not None:
                bar.update(1)
                if env.episode_returns:
                    bar.set_postfix(episodes=len(env.episode_returns), last_return=f"{env.episode_returns[-1]:.0f}",
                                    refresh=False)
            # a return is appended on the step that ends its episode, so this stops right after that step
            if stop_at_return is not None and env.episode_returns and env.episode_returns[-1] >= stop_at_return:
                self.solved = True
            return not self.solved

    return LearnerCallback(), bar


def train_sac(
    task: str,
    seed: int,
    total_steps: int,
    eval_every: int,
    eval_episodes: int,
    record_episodes: bool = False,
    on_evaluation: Callable[[int, dict[str, float]], None] | None = None,
    progress: str | None = None,
    final_policy_episodes: int = 0,
    stop_at_return: float | None = None,
) -> tuple[list[dict[str, float]], list[Episode]]:
    """Train SAC (stable-baselines3 defaults) on ``task`` for ``total_steps`` environment steps.

    Evaluates the deterministic policy every ``eval_every`` steps (and at step 0) for ``eval_episodes``
    episodes on the reset seeds PWM's evaluations use (``EVAL_SEED_OFFSET + seed + i``), calling
    ``on_evaluation(env_steps, metrics)`` after each; ``eval_every=0`` trains without evaluating.
    ``progress``: if given, the description of a progress bar over the environment steps.
    ``final_policy_episodes`` (with ``record_episodes``): episodes of the trained agent's stochastic
    policy (actions sampled as in training) recorded after the training episodes, with no further
    gradient steps. Once SAC has solved a task its later replay is much the same, so these extend the
    good part of a replay at the cost of environment steps alone (SAC's updates are most of its time).
    ``stop_at_return``: learning ends early, after the training episode that first returns at least
    this (``total_steps`` is then a cap). How soon SAC solves a task varies with its seed and with the
    CPU's floating-point paths, so a fixed step count may stop just before or long after.

    Returns:
        The evaluation rows (``train/env_steps`` plus ``eval/*``) and, with ``record_episodes``, every
        training episode in the order the agent lived them, then the final policy's episodes.
    """
    if final_policy_episodes and not record_episodes:
        raise ValueError("final_policy_episodes needs record_episodes=True (they are only recorded)")
    from stable_baselines3 import SAC

    env = RecordingGymEnv(make_env(task, seed=seed), record=record_episodes)
    eval_env = make_env(task, seed=seed + EVAL_SEED_OFFSET)
    model = SAC("MlpPolicy", env, seed=seed, verbose=0, device="cpu")

    def policy(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    callback, bar = _learner_callback(env, total_steps, progress, stop_at_return)
    rows = []
    if eval_every <= 0:
        model.learn(total_timesteps=total_steps, callback=callback, progress_bar=False)
    for steps in range(0, total_steps + 1, eval_every) if eval_every > 0 else ():
        if steps:
            model.learn(total_timesteps=eval_every, reset_num_timesteps=False, callback=callback, progress_bar=False)
        metrics, _ = evaluate_policy(eval_env, policy, eval_episodes, seed=EVAL_SEED_OFFSET + seed)
        rows.append({"train/env_steps": float(model.num_timesteps), **metrics})
        if on_evaluation is not None:
            on_evaluation(model.num_timesteps, metrics)
        if callback.solved:
            break
    if bar is not None:
        bar.close()
    # the same environment, so their resets continue the learner's stream (its unfinished episode is dropped)
    final_episodes = [run_episode(env.env, lambda obs: model.predict(obs, deterministic=False)[0])
                      for _ in tqdm(range(final_policy_episodes), desc=f"{progress}, final policy" if progress else None,
                                    disable=not (progress and final_policy_episodes), dynamic_ncols=True)]
    env.close()
    eval_env.close()
    return rows, env.episodes + final_episodes
