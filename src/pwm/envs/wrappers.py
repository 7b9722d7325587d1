"""Uniform wrappers over dm_control, Meta-World v3 and gymnasium MuJoCo.

Every wrapper exposes flat float32 observations, actions in ``[-1, 1]^act_dim``, and
``step(action) -> (obs, reward, terminated, truncated, info)`` where ``info["success"]`` is a float
(always 0 for tasks without a success notion). Episodes last at most ``max_episode_steps`` agent steps;
each agent step repeats the action ``action_repeat`` times and sums the rewards.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TaskEnv:
    """Base class: shared action checking, action repeat and the episode step limit."""

    name: str
    obs_dim: int
    act_dim: int
    action_repeat: int
    max_episode_steps: int

    def __init__(self) -> None:
        self._steps = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        self._steps = 0
        return self._reset(seed).astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape[0] != self.act_dim:
            raise ValueError(f"{self.name}: action has {action.shape[0]} dims, expected {self.act_dim}")
        if not np.isfinite(action).all():
            raise ValueError(f"{self.name}: non-finite action {action}")
        action = np.clip(action, -1.0, 1.0)
        total, terminated, truncated, info = 0.0, False, False, {"success": 0.0}
        for _ in range(self.action_repeat):
            obs, reward, terminated, truncated, info = self._step(action)
            total += reward
            if terminated or truncated:
                break
        self._steps += 1
        truncated = truncated or self._steps >= self.max_episode_steps
        return obs.astype(np.float32), float(total), bool(terminated), bool(truncated), info

    def _reset(self, seed: int | None) -> np.ndarray:
        raise NotImplementedError

    def _step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        raise NotImplementedError

    def render(self, width: int, height: int) -> np.ndarray:
        """RGB frame ``[height, width, 3]`` (uint8) of the current state, from the task's default camera."""
        raise NotImplementedError(f"{self.name}: rendering is not implemented for {type(self).__name__}")

    def close(self) -> None:
        pass


class _GymMujocoEnv(TaskEnv):
    """A gymnasium-API MuJoCo env in ``self._env`` (Meta-World, gymnasium): offscreen rendering of its
    ``model``/``data`` with one cached renderer per frame size, whatever the env's render_mode."""

    def __init__(self):
        super().__init__()
        self._renderers: dict[tuple[int, int], Any] = {}

    def render(self, width: int, height: int) -> np.ndarray:
        import mujoco

        base = self._env.unwrapped
        renderer = self._renderers.get((width, height))
        if renderer is None:
            base.model.vis.global_.offwidth = max(base.model.vis.global_.offwidth, width)
            base.model.vis.global_.offheight = max(base.model.vis.global_.offheight, height)
            renderer = self._renderers[(width, height)] = mujoco.Renderer(base.model, height=height, width=width)
        renderer.update_scene(base.data)
        return renderer.render().copy()

    def close(self):
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self._env.close()


class DMControlEnv(TaskEnv):
    """DeepMind Control suite task; observations are the flattened observation dict (sorted keys)."""

    action_repeat = 2
    max_episode_steps = 500

    def __init__(self, name: str, domain: str, task: str, seed: int = 0, build=None):
        """``build(random) -> dm_control Environment`` replaces ``suite.load(domain, task)`` (custom tasks)."""
        super().__init__()
        from dm_control import suite

        self.name = name
        self._env = build(seed) if build is not None else suite.load(domain, task, task_kwargs={"random": seed})
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum, spec.maximum
        self.act_dim = int(spec.shape[0])
        self.obs_dim = int(sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values()))

    @staticmethod
    def _flatten(observation) -> np.ndarray:
        return np.concatenate([np.asarray(observation[k], dtype=np.float64).reshape(-1) for k in sorted(observation)])

    def _reset(self, seed):
        if seed is not None:
            self._env.task.random.seed(seed)
        return self._flatten(self._env.reset().observation)

    def _step(self, action):
        scaled = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        timestep = self._env.step(scaled)
        return self._flatten(timestep.observation), float(timestep.reward or 0.0), False, timestep.last(), {"success": 0.0}

    def render(self, width: int, height: int) -> np.ndarray:
        return self._env.physics.render(height=height, width=width, camera_id=0)


class MetaWorldEnv(_GymMujocoEnv):
    """Meta-World v3 single task (MT1) with goal-observable state; ``info["success"]`` from the env."""

    action_repeat = 2
    max_episode_steps = 100

    def __init__(self, name: str, seed: int = 0):
        super().__init__()
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers the Meta-World/* environments)

        self.name = name
        env_name = name.removeprefix("mw-") + "-v3"
        self._env = gym.make("Meta-World/MT1", env_name=env_name, seed=seed, disable_env_checker=True)
        self.obs_dim = int(np.prod(self._env.observation_space.shape))
        self.act_dim = int(np.prod(self._env.action_space.shape))
        self._seed = seed

    def _reset(self, seed):
        obs, _ = self._env.reset(seed=self._seed if seed is None else seed)
        return obs

    def _step(self, action):
        obs, reward, terminated, truncated, info = self._env.step(action.astype(np.float32))
        return obs, float(reward), bool(terminated), bool(truncated), {"success": float(info.get("success", 0.0))}


class GymnasiumEnv(_GymMujocoEnv):
    """gymnasium MuJoCo locomotion (single-task stand-in for dflex); keeps the env's terminations."""

    action_repeat = 1

    def __init__(self, name: str, env_id: str, seed: int = 0):
        super().__init__()
        import gymnasium as gym

        self.name = name
        self._env = gym.make(env_id, disable_env_checker=True)
        self._low, self._high = self._env.action_space.low, self._env.action_space.high
        self.obs_dim = int(np.prod(self._env.observation_space.shape))
        self.act_dim = int(np.prod(self._env.action_space.shape))
        self.max_episode_steps = int(self._env.spec.max_episode_steps or 1000)
        self._seed = seed

    def _reset(self, seed):
        obs, _ = self._env.reset(seed=self._seed if seed is None else seed)
        self._seed = None  # later resets continue the env's own RNG stream
        return obs

    def _step(self, action):
        scaled = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        obs, reward, terminated, truncated, _ = self._env.step(scaled.astype(np.float32))
        return obs, float(reward), bool(terminated), bool(truncated), {"success": 0.0}


class PaddedEnv(TaskEnv):
    """Multi-task view of one task: observations zero-padded to ``obs_dim``, actions ``[padded_act_dim]``
    cut to the task's real width (padding dims are ignored, as the model masks them)."""

    def __init__(self, env: TaskEnv, obs_dim: int, act_dim: int):
        super().__init__()
        if obs_dim < env.obs_dim or act_dim < env.act_dim:
            raise ValueError(
                f"{env.name}: padded dims ({obs_dim}, {act_dim}) are smaller than the task's ({env.obs_dim}, {env.act_dim})"
            )
        self.env, self.name = env, env.name
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.action_repeat, self.max_episode_steps = 1, env.max_episode_steps

    def _pad(self, obs: np.ndarray) -> np.ndarray:
        return np.pad(obs, (0, self.obs_dim - obs.shape[0]))

    def reset(self, seed: int | None = None) -> np.ndarray:
        return self._pad(self.env.reset(seed))

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action).reshape(-1)[: self.env.act_dim])
        return self._pad(obs), reward, terminated, truncated, info

    def render(self, width: int, height: int) -> np.ndarray:
        return self.env.render(width, height)

    def close(self):
        self.env.close()
